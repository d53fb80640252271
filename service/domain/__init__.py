"""The pure core: events, consumer state, the inbox, outcomes and the rules that decide.

Nothing here imports from the rest of ``service`` (``tests/unit/test_architecture.py``
checks it): no Kafka, no SQL, no clock, no configuration.
"""
