"""Public test support, shipped with the package (like ``structlog.testing``).

For this project's tests and benchmarks and for anyone testing code around the service:

- ``model``: the independent model of the contract (what state and which outcome every
  event must give), written without the service's code, to compare a daemon against.
- ``workload``: seeded mixed event streams and the state the model expects of them.
- ``database``: read the tables directly (consumer state, inbox); hold the database locked.
- ``kafka_io``: produce, read and wait for committed offsets on a real broker.
- ``daemon``: a daemon's topics and settings, a daemon running in the caller's event loop,
  the model checks; ``polling``: wait for a condition with a deadline.
- ``daemon_process``: the daemon as a real OS process (signals, health port, logs, RSS).
- ``processes``: who is alive, whose children are whose (Linux /proc).
- ``fake_kafka``, ``fake_edges``: the whole daemon over a fake broker, memory sinks and a
  fake applier, no broker (the fast invariant tests: tests/unit/test_daemon_invariants.py).

Nothing here imports pytest, and the service itself never imports this package
(tests/unit/test_architecture.py checks both).  A free TCP port:
``service.embedded.process.free_port``.
"""
