"""Everything that talks Kafka protocol: the one place Kafka clients are built (options,
TLS/SASL, read_committed), topic administration, and tolerant record parsing."""
