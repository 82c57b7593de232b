"""Observing and driving runs from outside: Prometheus metrics of runs (``exporter``)."""
