"""What operators see: Prometheus metrics merged over all workers, JSON (or text) log lines with
secrets redacted, and the fleet file the supervisor publishes for ``/readyz`` and the scrape.
"""
