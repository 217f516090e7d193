"""What the engine tells its operators: Prometheus metrics, JSON logs, run reports.

Imports :mod:`engine.core` and :mod:`engine.state`.
"""
