"""The in-memory sinks (``service.sinks.memory``) the fast daemon tests stand on: they
keep what was written, count every attempt, and fail exactly as told (an outage of
kind ``sink`` for the next N writes, or any error until cleared)."""

from __future__ import annotations

import pytest

from service.domain.outcomes import EventSource
from service.failures import infrastructure_kind
from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable
from service.sinks.memory import MemoryDeadLetterSink, MemoryOutcomeSink

LETTER = DeadLetter(
    key=b"k",
    value=b"v",
    headers=[("error.class", b"invalid")],
    origin=EventSource("events", 0, 7),
    reason="not_json",
    invalid=True,
)
MESSAGE = OutcomeMessage(b"e", b"{}")


async def test_they_keep_what_was_written() -> None:
    letters, outcomes = MemoryDeadLetterSink(), MemoryOutcomeSink()
    assert not letters.written.is_set() and not outcomes.written.is_set()
    await letters.write_dead_letters([LETTER, LETTER])
    await outcomes.write_outcomes([MESSAGE])
    assert letters.letters == [LETTER, LETTER] and outcomes.messages == [MESSAGE]
    assert letters.written.is_set() and outcomes.written.is_set()
    assert (letters.attempts, outcomes.attempts) == (1, 1)


async def test_fail_next_is_an_outage_of_kind_sink_for_that_many_writes() -> None:
    sink = MemoryOutcomeSink()
    sink.fail_next()
    with pytest.raises(SinkUnavailable) as down:
        await sink.write_outcomes([MESSAGE])
    assert str(down.value) == "in-memory sink told to be unavailable"
    assert down.value.kind == "sink" and infrastructure_kind(down.value) == "sink"
    await sink.write_outcomes([MESSAGE])  # one write only, by default
    sink.fail_next(2)
    for _ in range(2):
        with pytest.raises(SinkUnavailable):
            await sink.write_outcomes([MESSAGE])
    await sink.write_outcomes([MESSAGE])
    assert sink.messages == [MESSAGE, MESSAGE] and sink.attempts == 5
    assert sink.written.is_set()


async def test_fail_with_raises_that_error_until_cleared() -> None:
    sink = MemoryDeadLetterSink()
    sink.fail_with(RuntimeError("a bug"))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="a bug"):
            await sink.write_dead_letters([LETTER])
    assert sink.letters == [] and not sink.written.is_set()
    sink.fail_with(None)
    await sink.write_dead_letters([LETTER])
    assert sink.letters == [LETTER] and sink.attempts == 3
