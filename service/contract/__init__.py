"""The event contract: what producers send and what the daemon accepts.

``schemas/`` (JSON Schema) is the source of truth; the Python side must agree with it.
"""
