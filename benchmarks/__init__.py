"""Benchmarks of consumer-generation-service: ``python -m benchmarks {e2e,scaling,soak}``.

Each command starts its own Kafka broker (and PostgreSQL cluster when needed) with the
project's launchers, measures the limits and the service side by side in one run, and
writes its section of ``docs/benchmarks.md`` with a chart in ``docs/``.
"""
