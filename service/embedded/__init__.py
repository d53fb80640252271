"""Real infrastructure for local runs and tests, without a container engine.

``kafka`` resolves Apache Kafka from Maven Central and runs a single KRaft node;
``postgres`` makes a throwaway PostgreSQL cluster from the machine's binaries.
Both bind to 127.0.0.1 only and die with the process that started them.
"""
