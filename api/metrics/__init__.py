"""``GET /metrics``: this API process's Prometheus series, to the admin token."""
