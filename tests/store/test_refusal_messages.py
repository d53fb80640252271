"""What an operator reads when the daemon refuses to start on its database: the
schema is missing (``service.store.migrate``), or the database may lose commits
(``service.store.durability``); and the warning logged when that risk was accepted."""

from __future__ import annotations

import logging

import pytest

from service.store.durability import NotDurableError, check_durability
from service.store.engine import create_engine
from service.store.errors import SchemaNotCurrentError
from service.store.migrate import ensure_schema_current
from tests.apply.helpers import settings_for

ALLOW = "CONSUMERGEN_POSTGRESQL_ALLOW_COMMIT_LOSS_ON_CRASH"


async def test_a_database_never_migrated_is_refused_saying_so(sqlite_url: str) -> None:
    engine = create_engine(settings_for(sqlite_url))
    try:
        with pytest.raises(SchemaNotCurrentError) as refused:
            await ensure_schema_current(engine)
    finally:
        await engine.dispose()
    assert str(refused.value) == (
        "the database has no schema (it was never migrated): run `consumergen db upgrade` first"
    )


@pytest.mark.postgres
async def test_a_database_that_may_lose_commits_is_refused_in_one_sentence(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's server runs with fsync, synchronous_commit and full_page_writes off:
    each risk named (in the dialect's words), then the way out."""
    accepting = settings_for(postgres_url, postgresql_allow_commit_loss_on_crash=True)
    engine = create_engine(accepting)
    try:
        caplog.set_level(logging.WARNING, "service.store.durability")
        risks = await check_durability(engine, accepting)
        with pytest.raises(NotDurableError) as refused:
            await check_durability(engine, settings_for(postgres_url))
    finally:
        await engine.dispose()

    assert len(risks) == 3
    assert str(refused.value) == (
        "the database may lose committed transactions on a crash, and the daemon commits"
        " Kafka offsets right after them: "
        + "; ".join(risk.what for risk in risks)
        + f". Make it durable, or accept the loss with {ALLOW}=true"
    )
    warned = [
        dict(record.msg)
        for record in caplog.records
        if record.name == "service.store.durability" and record.levelno == logging.WARNING
    ]
    assert [(w["event"], w["risk"], w["accepted_by"]) for w in warned] == [
        ("database durability reduced", risk.what, ALLOW) for risk in risks
    ]
