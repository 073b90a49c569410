"""API keys: a user's own (``/v1/me/keys``) and an admin's view of anyone's."""
