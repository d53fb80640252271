"""The start-up check that the database keeps what it commits (``docs/durability.md``).

The daemon commits a partition's offset right after the database commit of its batch;
if the database can lose that commit on a crash, the events are lost for good.  Each
dialect says what in its configuration risks that (``Dialect.durability_risks``); a risk
the operator accepted under a ``CONSUMERGEN_*`` setting that names it is logged as a
warning at every start, any other one stops the daemon with a ``ConfigurationError``.
"""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.domain.errors import ConfigurationError
from service.store.dialects import DurabilityRisk, dialect_for
from service.store.engine import read_only

log = structlog.get_logger(__name__)


class NotDurableError(ConfigurationError):
    """The database may lose committed transactions on a crash, and nobody said that is
    acceptable; the message names each setting and the one that would accept it."""


async def durability_risks(engine: AsyncEngine, settings: Settings) -> list[DurabilityRisk]:
    """What this database's configuration risks, as its dialect sees it."""
    async with engine.connect() as connection:
        connection = await read_only(connection)
        return await dialect_for(engine.dialect.name).durability_risks(connection, settings)


async def check_durability(engine: AsyncEngine, settings: Settings) -> list[DurabilityRisk]:
    """Warn about each accepted risk; raise ``NotDurableError`` if any is not accepted.
    Infrastructure errors (the database is down) propagate for the caller to retry."""
    risks = await durability_risks(engine, settings)
    refused = [risk for risk in risks if not risk.accepted]
    if refused:
        settings_ = sorted({risk.setting for risk in refused})
        raise NotDurableError(
            "the database may lose committed transactions on a crash, and the daemon "
            "commits Kafka offsets right after them: "
            + "; ".join(risk.what for risk in refused)
            + ". Make it durable, or accept the loss with "
            + " and ".join(f"{name}=true" for name in settings_)
        )
    for risk in risks:
        log.warning("database durability reduced", risk=risk.what, accepted_by=risk.setting)
    return risks
