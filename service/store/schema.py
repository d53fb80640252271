"""The tables, as SQLAlchemy Core metadata shared by the store and the migrations.

Modelled on OpenStack Placement (``projects``, ``users``, ``consumer_types``,
``consumers``) plus the inbox ``processed_events``.  Two deliberate differences from
Placement: a deleted consumer stays as a *tombstone* (``deleted_at`` set) that keeps its
generation, so a re-create continues counting and a stale precondition from an earlier
life can never match again; and ``last_event_id`` names the event that made the current
row, which lets a batch verify its compare-and-swap writes with one SELECT on drivers
that cannot report the row count of an ``executemany``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

#: Constraint names are spelled out so that migrations are identical on both databases.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Length of owner ids and consumer type names, as in the event contract.
NAME_LENGTH = 255
#: A canonical UUID: 36 characters, lower-case, dashed.
UUID_LENGTH = 36

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("external_id", String(NAME_LENGTH), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("external_id", String(NAME_LENGTH), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

consumer_types = Table(
    "consumer_types",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(NAME_LENGTH), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

consumers = Table(
    "consumers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uuid", String(UUID_LENGTH), nullable=False, unique=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("consumer_type_id", Integer, ForeignKey("consumer_types.id"), nullable=True),
    Column("generation", BigInteger, nullable=False),
    #: The event whose change produced this row (see the module docstring).
    Column("last_event_id", String(UUID_LENGTH), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    #: NULL: live.  Set: a tombstone, which keeps the generation of the delete.
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("generation >= 1", name="generation_positive"),
    Index("ix_consumers_deleted_at", "deleted_at"),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", String(UUID_LENGTH), primary_key=True),
    Column("consumer_uuid", String(UUID_LENGTH), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    #: applied | rejected | failed (a duplicate is never recorded: the original row stays).
    Column("outcome", String(16), nullable=False),
    Column("reason", String(32), nullable=True),
    Column("generation_after", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("source_topic", String(NAME_LENGTH), nullable=True),
    Column("source_partition", Integer, nullable=True),
    Column("source_offset", BigInteger, nullable=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("outcome IN ('applied', 'rejected', 'failed')", name="outcome_known"),
    Index("ix_processed_events_consumer_uuid_processed_at", "consumer_uuid", "processed_at"),
    Index("ix_processed_events_processed_at", "processed_at"),
)
