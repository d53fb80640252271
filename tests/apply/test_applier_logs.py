"""The applier's log lines name what happened, with the numbers an operator needs: a batch
applied (how many events, how long), a batch split after a race, an event recorded FAILED
after its compare-and-swap retries ran out (after how many attempts).  On a real SQLite
file; the records are read from the standard library's logging, where structlog hands
them over."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.apply.helpers import Bumping, migrated, new_id, upsert

LOGGER = "service.apply.applier"


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[int, dict[str, Any]]]:
    return [
        (r.levelno, r.msg) for r in caplog.records if r.name == LOGGER and isinstance(r.msg, dict)
    ]


async def test_a_batch_applied_says_how_many_events_and_how_long(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    async with migrated(sqlite_url) as db:
        began = time.perf_counter()
        for size in (3, 2, 4, 2, 3, 2):
            await db.applier.apply_batch([(upsert(new_id()), None) for _ in range(size)])
        elapsed_ms = (time.perf_counter() - began) * 1000
    lines = [e for e in events(caplog) if e[1]["event"] == "batch_applied"]
    assert [(level, line["events"]) for level, line in lines] == [
        (logging.DEBUG, size) for size in (3, 2, 4, 2, 3, 2)
    ]
    durations = [line["duration_ms"] for _, line in lines]
    assert all(type(d) is float and d > 0 for d in durations)
    assert sum(durations) <= elapsed_ms + 0.1
    # Rounded to hundredths: a third decimal on six timings in a row is no accident.
    assert all(d == round(d, 2) for d in durations)


async def test_a_batch_split_after_a_race_says_how_many_events(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with migrated(sqlite_url) as db:
        c = new_id()
        await db.applier.apply(upsert(c))
        applier = Bumping(db, c, times=1)
        await applier.apply_batch([(upsert(c), None), (upsert(new_id()), None)])
    assert [(level, line["event"], line["events"]) for level, line in events(caplog)] == [
        (logging.INFO, "batch_split_after_race", 2)
    ]


async def test_exhausted_retries_are_a_warning_with_the_attempts(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    async with migrated(sqlite_url, cas_retry_attempts=3) as db:
        c = new_id()
        await db.applier.apply(upsert(c))
        await Bumping(db, c, times=100).apply(upsert(c))
    assert [(level, line["event"], line["attempts"]) for level, line in events(caplog)] == [
        (logging.WARNING, "cas_retries_exhausted", 3)
    ]
