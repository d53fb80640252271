"""`consumergen verify`'s choices reach the rebuild, with and without the topic: the
database ``--scratch-url`` names is the one rebuilt (left with the expected state), and
``--strict`` counts a pruned tombstone whether the topic is read or not (no broker: the
topic through tests/replay/fake_topic.py, as in test_cli_operator.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from service.config import load_settings
from service.store.engine import create_engine
from tests.replay.fake_topic import Log, install
from tests.replay.test_cli_operator import (  # the same history
    C3,
    DOCS,
    applied,
    invoke,
    migrate,
    sql,
)

# The CLI configures logging for the process: the suite's log guard comes back after.
pytestmark = pytest.mark.usefixtures("restore_log_guard")


def consumers_in(url: str) -> int:
    async def count() -> int:
        engine = create_engine(load_settings(database_url=url))
        try:
            async with engine.connect() as connection:
                return int(
                    (await connection.execute(text("SELECT count(*) FROM consumers"))).scalar_one()
                )
        finally:
            await engine.dispose()

    return asyncio.run(count())


@pytest.mark.parametrize("with_topic", [False, True])
def test_the_scratch_database_named_is_the_one_rebuilt(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    with_topic: bool,
) -> None:
    history = applied(env, tmp_path, DOCS)
    install(monkeypatch, Log({0: []}))  # an empty topic
    scratch = f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
    migrate({"CONSUMERGEN_DATABASE_URL": scratch})
    args = ["verify", "--archive", str(history), "--scratch-url", scratch, "--json"]
    result = invoke(env, *args, *(["--with-topic"] if with_topic else []))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clean"] is True
    assert consumers_in(scratch) == 3  # C1, C2 and C3's tombstone, as the log says


@pytest.mark.parametrize("with_topic", [False, True])
def test_strict_counts_a_pruned_tombstone_with_or_without_the_topic(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    with_topic: bool,
) -> None:
    history = applied(env, tmp_path, DOCS)
    install(monkeypatch, Log({0: []}))
    sql(env, f"DELETE FROM consumers WHERE uuid = '{C3}'")
    topic = ["--with-topic"] if with_topic else []
    assert invoke(env, "verify", "--archive", str(history), *topic).exit_code == 0
    strict = invoke(env, "verify", "--archive", str(history), "--strict", "--json", *topic)
    assert strict.exit_code == 1
    assert json.loads(strict.stdout)["counts"] == {"pruned_tombstone": 1}
