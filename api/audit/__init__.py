"""``/v1/admin/audit``: every admin action, newest first."""
