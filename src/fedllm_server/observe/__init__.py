"""The server's live view: Prometheus counters fed by its metrics records, /status, the page."""
