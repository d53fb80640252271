"""consumer-generation-service: the authoritative record of consumers and their generation.

Writers publish update events to Kafka; the daemon applies them idempotently with
compare-and-swap generation checks.  See ``../shared/DESIGN.md`` for the contract.
"""

__version__ = "0.1.0"
