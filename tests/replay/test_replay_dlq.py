"""Dead letters, after the cause is fixed: applied by replay, or put back on the topic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.contract.records import ERROR_HEADERS
from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import end_offsets, read_all, wait_all_committed
from service.testing.model import Model, event_doc
from tests.replay.helpers import Cli, run_daemon_over, settings_env

pytestmark = [pytest.mark.kafka]

SMALL = 1024
LARGE = 65_536


def _workload() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Creates of 8 consumers; then for 4 of them an update too big for SMALL bytes."""
    consumers = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 9)]
    docs = [event_doc(c, expected=None, project="p", user="u") for c in consumers]
    big = [event_doc(c, project="big-project") for c in consumers[:4]]
    return docs + big, big


def _padding(big: list[dict[str, Any]]) -> dict[str, int]:
    """Trailing spaces that take these events over SMALL bytes, far under LARGE."""
    return {d["event_id"]: 1500 for d in big}


async def _dead_lettered(settings_bootstrap: str, topics: Topics, expected: int) -> list[Any]:
    records = await read_all(settings_bootstrap, topics.dlq)
    assert len(records) == expected
    for record in records:
        assert dict(record.headers)["error.reason"] == b"too_large"
    return records


async def test_dlq_replay_after_raising_the_limit_applies_what_is_now_valid(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    docs, big = _workload()
    settings = daemon_settings(kafka_bootstrap, database_url, topics, max_event_bytes=SMALL)
    await run_daemon_over(settings, kafka_bootstrap, topics, docs, _padding(big))
    await _dead_lettered(kafka_bootstrap, topics, len(big))
    before, rows = await consumer_state(database_url), await inbox(database_url)
    model = Model()
    for doc in docs:
        model.apply(doc)
    cli = Cli(settings_env(settings))

    # Still too large under the old limit: invalid, exit 1, nothing written.
    still = await cli.json("replay", "--dlq", code=1)
    assert still["invalid_by_reason"] == {"too_large": len(big)}
    assert still["outcomes"]["applied"] == 0

    dry = await cli.json("replay", "--dlq", "--max-event-bytes", str(LARGE), "--dry-run")
    assert dry["outcomes"]["applied"] == len(big) and dry["invalid"] == 0
    assert {
        u: (c["generation_before"], c["generation_after"]) for u, c in dry["consumers"].items()
    } == {d["consumer_uuid"]: (1, 2) for d in big}
    assert await consumer_state(database_url) == before
    assert await inbox(database_url) == rows

    done = await cli.json("replay", "--dlq", "--max-event-bytes", str(LARGE))
    assert done["outcomes"] == {"applied": len(big), "duplicate": 0, "rejected": 0, "failed": 0}
    assert await consumer_state(database_url) == model.state()
    again = await cli.json("replay", "--dlq", "--max-event-bytes", str(LARGE))
    assert again["outcomes"]["duplicate"] == len(big) and again["outcomes"]["applied"] == 0
    assert await consumer_state(database_url) == model.state()


async def test_republish_puts_dead_letters_back_for_the_daemon(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics
) -> None:
    docs, big = _workload()
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics, max_event_bytes=SMALL)
    await run_daemon_over(settings, kafka_bootstrap, topics, docs, _padding(big))
    dead = await _dead_lettered(kafka_bootstrap, topics, len(big))
    fixed = daemon_settings(kafka_bootstrap, sqlite_url, topics, max_event_bytes=LARGE)
    cli = Cli(settings_env(fixed))

    ends = await end_offsets(kafka_bootstrap, topics.events)
    dry = await cli.json("replay", "--dlq", "--republish", "--dry-run")
    assert dry["republished"] == len(big)
    assert await end_offsets(kafka_bootstrap, topics.events) == ends  # nothing sent

    done = await cli.json("replay", "--dlq", "--republish")
    assert done["republished"] == len(big) and done["problems"] == 0
    records = await read_all(kafka_bootstrap, topics.events)
    back = [r for r in records if r.offset >= ends[r.partition]]
    assert sorted((r.key, r.value) for r in back) == sorted((r.key, r.value) for r in dead)
    for record in back:
        names = {name for name, _ in record.headers}
        assert not names & set(ERROR_HEADERS)
        assert json.loads(record.value)["event_id"] in {d["event_id"] for d in big}

    model = Model()
    for doc in docs:
        model.apply(doc)
    async with running_daemon(fixed):
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
    assert await consumer_state(sqlite_url) == model.state()
