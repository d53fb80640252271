"""The consumer store: tables, dialects, engine, migrations, the unit of work, reads and
housekeeping."""

from service.store.engine import create_engine
from service.store.errors import SchemaNotCurrentError, TransientDatabaseError, is_transient
from service.store.migrate import (
    current_revision,
    ensure_schema_current,
    head_revision,
    upgrade,
    upgrade_engine,
)
from service.store.prune import PruneResult, prune
from service.store.reads import applied_counts, get_consumer, recent_events
from service.store.unit_of_work import SqlUnitOfWorkFactory, UnitOfWork, UnitOfWorkFactory

__all__ = [
    "PruneResult",
    "SchemaNotCurrentError",
    "SqlUnitOfWorkFactory",
    "TransientDatabaseError",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "applied_counts",
    "create_engine",
    "current_revision",
    "ensure_schema_current",
    "get_consumer",
    "head_revision",
    "is_transient",
    "prune",
    "recent_events",
    "upgrade",
    "upgrade_engine",
]
