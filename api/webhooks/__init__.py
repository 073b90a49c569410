"""Webhooks: the signing secret and the deliveries of a job."""
