"""Outcome records of every partition, one write at a time (``service.sinks.coalescing``),
over a memory sink: no broker.

What must hold: records handed over while a write is in flight go out together in the
next write, each caller's in the order it handed them; a caller returns only once the
write that carried its records returned; the write's failure is every caller's and
nothing of it counts as written; a cancelled caller does not cancel the write the
others wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.sinks.base import OutcomeMessage, SinkUnavailable
from service.sinks.coalescing import CoalescingOutcomeSink
from service.sinks.memory import MemoryOutcomeSink


class GatedSink(MemoryOutcomeSink):
    """A memory sink whose writes wait for ``gate`` (an acknowledgement in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[list[bytes]] = []

    async def write_outcomes(self, messages: Sequence[OutcomeMessage]) -> None:
        self.calls.append([m.value for m in messages])
        self.entered.set()
        await self.gate.wait()
        await super().write_outcomes(messages)


def _records(caller: str, count: int) -> list[OutcomeMessage]:
    return [OutcomeMessage(None, f"{caller}{n}".encode()) for n in range(count)]


async def test_records_handed_over_during_a_write_go_together_in_the_next() -> None:
    inner = GatedSink()
    sink = CoalescingOutcomeSink(inner)
    first = asyncio.ensure_future(sink.write_outcomes(_records("a", 2)))
    await asyncio.wait_for(inner.entered.wait(), 5)
    later = [asyncio.ensure_future(sink.write_outcomes(_records(caller, 2))) for caller in "bcd"]
    await asyncio.sleep(0)
    assert not any(w.done() for w in [first, *later])  # the first write is not acknowledged
    inner.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert inner.calls == [[b"a0", b"a1"], [b"b0", b"b1", b"c0", b"c1", b"d0", b"d1"]]
    assert sink.writes == 2


async def test_a_failed_write_is_every_callers_and_nothing_is_written() -> None:
    inner = MemoryOutcomeSink()
    inner.fail_next(1)
    sink = CoalescingOutcomeSink(inner)
    results = await asyncio.gather(
        sink.write_outcomes(_records("a", 1)),
        sink.write_outcomes(_records("b", 1)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [SinkUnavailable, SinkUnavailable]
    assert inner.messages == []
    await sink.write_outcomes(_records("a", 1))  # retried by its caller: written now
    assert [m.value for m in inner.messages] == [b"a0"]


async def test_a_cancelled_caller_does_not_cancel_the_others_write() -> None:
    inner = GatedSink()
    sink = CoalescingOutcomeSink(inner)
    blocker = asyncio.ensure_future(sink.write_outcomes(_records("x", 1)))
    await asyncio.wait_for(inner.entered.wait(), 5)
    leaving = asyncio.ensure_future(sink.write_outcomes(_records("a", 1)))
    staying = asyncio.ensure_future(sink.write_outcomes(_records("b", 1)))
    await asyncio.sleep(0)
    leaving.cancel()
    inner.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, staying), 5)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # the cancelled caller's records were taken out before the write that followed
    assert inner.calls == [[b"x0"], [b"b0"]]


async def test_a_caller_cancelled_during_its_write_leaves_the_others_answered() -> None:
    """The write goes on for the callers after the cancelled one (its records are written
    all the same: at-least-once), and the cancelled caller's future, cancelled, is looked
    at without an error in any callback."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        inner = GatedSink()
        sink = CoalescingOutcomeSink(inner)
        leaving = asyncio.ensure_future(sink.write_outcomes(_records("a", 1)))
        staying = asyncio.ensure_future(sink.write_outcomes(_records("b", 1)))
        await asyncio.wait_for(inner.entered.wait(), 5)
        assert inner.calls == [[b"a0", b"b0"]]  # one write carries both
        leaving.cancel()
        await asyncio.sleep(0)
        inner.gate.set()
        await asyncio.wait_for(staying, 5)
        assert leaving.cancelled()
        assert [m.value for m in inner.messages] == [b"a0", b"b0"]
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_failed_write_reaches_the_callers_after_a_cancelled_one() -> None:
    inner = GatedSink()
    inner.fail_next(1)
    sink = CoalescingOutcomeSink(inner)
    first = asyncio.ensure_future(sink.write_outcomes(_records("a", 1)))
    leaving = asyncio.ensure_future(sink.write_outcomes(_records("b", 1)))
    last = asyncio.ensure_future(sink.write_outcomes(_records("c", 1)))
    await asyncio.wait_for(inner.entered.wait(), 5)
    leaving.cancel()
    await asyncio.sleep(0)
    inner.gate.set()
    done, _ = await asyncio.wait([first, last], timeout=5)
    assert len(done) == 2
    assert isinstance(first.exception(), SinkUnavailable)
    assert isinstance(last.exception(), SinkUnavailable)
    assert leaving.cancelled() and inner.messages == []


async def test_the_writer_is_a_task_named_for_what_it_does() -> None:
    """A task dump (or asyncio's "Task was destroyed but it is pending") names it."""
    inner = GatedSink()
    sink = CoalescingOutcomeSink(inner)
    writing = asyncio.ensure_future(sink.write_outcomes(_records("a", 1)))
    await asyncio.wait_for(inner.entered.wait(), 5)
    assert "outcome-writes" in {task.get_name() for task in asyncio.all_tasks()}
    inner.gate.set()
    await asyncio.wait_for(writing, 5)
