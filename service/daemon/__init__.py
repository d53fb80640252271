"""The long-running daemon: Kafka in, idempotent apply, outcomes and dead letters out.

``app`` is the front (``Daemon``: wires the parts, runs the life cycle); ``signals``
runs it as a process.  ``startup`` waits for the schema and the broker, ``membership``
adopts and releases partitions, ``fetch`` hands records to each partition's
``worker`` (strictly in offset order, over the narrow ``WorkerHost`` that ``host``
implements), ``commits`` coalesces offset commits, ``pauses`` and ``probes`` keep flow
and readiness right, ``health`` serves liveness, readiness and Prometheus metrics.
"""
