"""``/v1/me``: the calling user."""
