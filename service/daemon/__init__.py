"""The long-running daemon: Kafka in, idempotent apply, outcomes and dead letters out.

``runner`` owns the consumer, the rebalance listener and shutdown; ``partition``
processes one partition strictly in offset order; ``health`` serves liveness,
readiness and Prometheus metrics.
"""
