"""Plans: an admin puts a user on a plan (``PUT /v1/admin/users/{user_id}/plan``)."""
