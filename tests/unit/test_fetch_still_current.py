"""Records of a fetch during which the group changed (``service.daemon.fetch``): handed
to their partition's worker only when the consumer's position is past them, so records
of a partition revoked and assigned again (rewound to its committed offset) are never
handed out ahead of the records before them; when the position cannot be had in time
they are dropped, and come again from the committed offset: nothing lost.

``tests/unit/test_daemon_invariants.py`` holds the same through whole rebalances over the
fake broker; these cases take the consumer's answer one at a time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError

from service.config import load_settings
from service.daemon.fetch import _still_current
from service.testing.fake_kafka import fetched_record

TP = TopicPartition("events", 0)
RECORDS = [fetched_record(TP, offset, b"{}") for offset in (5, 6, 7)]


class _Consumer:
    """The one call ``_still_current`` makes: ``position`` (returns, raises or hangs)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[TopicPartition] = []

    async def position(self, tp: TopicPartition) -> int:
        self.asked.append(tp)
        if self.answer == "hang":
            await asyncio.Event().wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return int(self.answer)


def _settings() -> Any:
    return load_settings(database_url="sqlite+aiosqlite:///unused", request_timeout_seconds=0.2)


@pytest.mark.parametrize(
    ("position", "current"),
    [
        (8, True),  # past the last record: these are the current assignment's
        (9, True),  # past, not right after (a transaction marker may follow)
        (7, False),  # at the last record: rewound, it comes again
        (5, False),  # rewound to the first
    ],
)
async def test_records_are_handed_out_only_when_the_position_is_past_them(
    position: int, current: bool
) -> None:
    consumer = _Consumer(position)
    assert await _still_current(consumer, TP, RECORDS, _settings()) is current  # type: ignore[arg-type]
    assert consumer.asked == [TP]


@pytest.mark.parametrize(
    "answer",
    [IllegalStateError("no longer assigned"), KafkaConnectionError("away"), "hang"],
    ids=["revoked", "broker away", "no answer"],
)
async def test_records_whose_position_cannot_be_had_are_dropped_within_the_request_timeout(
    answer: Any,
) -> None:
    consumer = _Consumer(answer)
    # Bounded by the request timeout (0.2 s): a fetch loop never waits on it for longer.
    checked = _still_current(consumer, TP, RECORDS, _settings())  # type: ignore[arg-type]
    assert await asyncio.wait_for(checked, 5) is False
