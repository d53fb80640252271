"""The partition worker at its edges, without a broker: stops that find it not started,
already ended or past their grace, a bug while the send stage is full, a failing offset
commit, a batch whose outcome records are all filtered out, and the one moment a batch's
records share.

``test_partition_worker.py`` holds the worker's order and commits in the ordinary
course; these are the cases around it that the daemon-worker mutation run (commit
``7db56a0``) showed no test looked at (docs/mutation.md).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from service.apply.applier import Applier
from service.contract import records
from service.contract.replies import ReplyPolicy
from service.daemon.retries import install_retry_hooks
from service.daemon.worker import PartitionWorker
from service.domain.outcomes import Outcome
from tests.unit.test_partition_worker import (
    CONFIG,
    TP,
    FakeHost,
    _consumer,
    _event,
    _outcome_offsets,
    _record,
    _run,
)

#: The names of the worker's own tasks end with its partition (``partition-events/0``,
#: ``apply-events/0``, ...).
_LABEL = f"{TP.topic}/{TP.partition}"

#: Loop turns a fake rollback takes after its batch was cancelled: a rollback is a round
#: trip to the database, so whoever waits for it waits more than a turn or two.
_ROLLBACK_TURNS = 20


def _workers_tasks() -> list[asyncio.Task[Any]]:
    """The worker's tasks still running (``asyncio.all_tasks`` lists only those)."""
    return [task for task in asyncio.all_tasks() if task.get_name().endswith(_LABEL)]


async def _rollback(done: list[str]) -> None:
    for _ in range(_ROLLBACK_TURNS):
        await asyncio.sleep(0)  # one loop turn (no timer): a round trip of the rollback
    done.append("rolled back")


async def test_a_stop_before_a_start_or_after_the_end_has_nothing_to_abandon(
    applier: Applier,
) -> None:
    """A worker never started (``membership`` starts each at once, but ``stop`` is
    the worker's own promise) and a worker whose stages have ended (stopped already)
    have no batch in flight: their stop says so (True) at once, rather than failing or
    reporting a batch abandoned."""
    host = FakeHost(applier)
    never_started = PartitionWorker(host, TP)
    assert await asyncio.wait_for(never_started.stop(5.0), 5) is True

    worker = await _run(host, [_event(0, _consumer(40))])  # fed, committed, stopped
    assert host.commits == [(1, 0, 1)]
    assert await asyncio.wait_for(worker.stop(5.0), 5) is True  # stopped again
    assert host.fatal_errors == []


async def test_a_commit_failing_on_the_broker_is_retried_as_the_commit_step(
    applier: Applier,
) -> None:
    """An offset commit the broker cannot take now is the ``commit`` step failing: the
    partition is reported failing and then recovered under that name, and the retry is
    counted under it (operators read the step to know what to look at)."""
    host = FakeHost(applier)
    plain_commit = host.commit
    failures: list[BaseException] = [KafkaConnectionError("broker away")]

    async def commit_failing_once(tp: TopicPartition, offset: int) -> bool:
        if failures:
            raise failures.pop()
        return await plain_commit(tp, offset)

    host.commit = commit_failing_once  # type: ignore[method-assign]
    await _run(host, [_event(0, _consumer(41))])
    assert host.fatal_errors == []
    assert host.failed == [("commit", "KafkaConnectionError")]
    assert host.recovered == [("commit", True)]
    registry = host.metrics.registry
    assert registry.get_sample_value("consumergen_retries_total", {"step": "commit"}) == 1
    assert host.commits == [(1, 0, 1)]


async def test_a_stop_queued_behind_a_waiting_batch_still_writes_and_commits_it(
    applier: Applier,
) -> None:
    """A stop while batch 1's records wait for their acknowledgement and batch 2 waits
    behind them: the send stage takes batch 2 and the stop's end mark in one go once
    batch 1 is acknowledged, writes batch 2, commits both and ends, so the stop ends
    as soon as that is done, with nothing abandoned."""
    install_retry_hooks()
    host = FakeHost(applier)
    assert host.outcomes is not None
    sink = host.outcomes
    write = sink.write_outcomes
    held, acknowledge = asyncio.Event(), asyncio.Event()

    async def first_write_waits(messages: Any) -> None:
        if not held.is_set():
            held.set()
            await acknowledge.wait()
        await write(messages)

    sink.write_outcomes = first_write_waits  # type: ignore[method-assign]
    relieved: list[int] = []
    queued_twice = asyncio.Event()

    def relieve_backpressure(tp: TopicPartition, backlog: int) -> None:
        relieved.append(backlog)  # called once a batch is queued for the send stage
        if len(relieved) == 2:
            queued_twice.set()

    host.relieve_backpressure = relieve_backpressure  # type: ignore[method-assign]
    consumer = _consumer(42)
    worker = PartitionWorker(host, TP)
    worker.start()
    try:
        worker.feed([_event(0, consumer)])
        await asyncio.wait_for(held.wait(), 10)
        worker.feed([_event(1, consumer)])
        await asyncio.wait_for(queued_twice.wait(), 10)
        [apply_stage] = [t for t in _workers_tasks() if t.get_name() == f"apply-{_LABEL}"]
        stopping = asyncio.create_task(worker.stop(10.0))
        # The apply stage ends at the stop, its end mark queued behind batch 2.
        await asyncio.wait({apply_stage}, timeout=10)
        assert apply_stage.done()
        assert _outcome_offsets(host) == [] and host.commits == []
        acknowledge.set()
        assert await asyncio.wait_for(stopping, 15) is True
    finally:
        acknowledge.set()
        await worker.stop(1.0)
    assert host.fatal_errors == []
    assert _outcome_offsets(host) == [0, 1]
    assert host.commits[-1][0] == 2
    assert worker.committed == 2
    assert _workers_tasks() == []


async def test_a_stop_past_its_grace_returns_once_the_abandoned_batch_rolled_back(
    applier: Applier,
) -> None:
    """A batch still in the database when the grace runs out is abandoned (False), and
    the stop returns only once its cancellation has run to the end: the transaction
    rolled back and every task of the worker ended (the daemon closes the database
    right after)."""
    host = FakeHost(applier)
    entered = asyncio.Event()
    done: list[str] = []

    async def apply_never_ending(items: Any) -> list[Outcome]:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            await _rollback(done)
        raise AssertionError("unreachable: only a cancellation ends the wait")

    host.applier = type("Hanging", (), {"apply_batch": staticmethod(apply_never_ending)})()
    worker = PartitionWorker(host, TP)
    worker.start()
    worker.feed([_event(0, _consumer(43))])
    await asyncio.wait_for(entered.wait(), 10)
    assert await asyncio.wait_for(worker.stop(0.05), 15) is False
    assert done == ["rolled back"]
    assert _workers_tasks() == []
    assert host.commits == [] and host.fatal_errors == []
    assert host.metrics.registry.get_sample_value("consumergen_batches_in_progress") == 0


async def test_a_bug_in_the_send_stage_stops_the_worker_while_the_apply_stage_waits(
    applier: Applier,
) -> None:
    """A bug in the send stage while its queue is full and the apply stage is inside a
    transaction: the apply stage is cancelled with the rest (its own cancellation, not
    a stop's: it must not try to hand the full queue an end mark nobody will take), the
    transaction rolls back, and only then is the daemon told (``fatal``), with nothing
    committed."""
    install_retry_hooks()
    host = FakeHost(applier)
    host.config = replace(CONFIG, batch_max_events=1)
    assert host.outcomes is not None
    held, crash = asyncio.Event(), asyncio.Event()

    async def write_then_fail(messages: Any) -> None:
        held.set()
        await crash.wait()
        raise RuntimeError("a bug in a sink")

    host.outcomes.write_outcomes = write_then_fail  # type: ignore[method-assign]
    done: list[str] = []
    calls: list[int] = []
    in_sixth = asyncio.Event()

    async def sixth_never_ends(items: Any) -> list[Outcome]:
        calls.append(len(items))
        if len(calls) < 6:
            return await applier.apply_batch(items)
        in_sixth.set()
        try:
            await asyncio.Event().wait()
        finally:
            await _rollback(done)
        raise AssertionError("unreachable: only a cancellation ends the wait")

    host.applier = type("Sixth", (), {"apply_batch": staticmethod(sixth_never_ends)})()
    told: list[tuple[BaseException, list[str], list[str]]] = []
    fatal = asyncio.Event()

    def fatal_after_looking(exc: BaseException) -> None:
        told.append((exc, list(done), [t.get_name() for t in _workers_tasks()]))
        fatal.set()

    host.fatal = fatal_after_looking  # type: ignore[method-assign]
    worker = PartitionWorker(host, TP)
    worker.start()
    try:
        worker.feed([_event(0, _consumer(44))])
        await asyncio.wait_for(held.wait(), 10)  # the send stage holds batch 1
        # Batches 2 to 5 fill the send stage's queue; batch 6 stays in the database.
        worker.feed([_event(offset, _consumer(44 + offset)) for offset in range(1, 6)])
        await asyncio.wait_for(in_sixth.wait(), 10)
        crash.set()
        await asyncio.wait_for(fatal.wait(), 10)
    finally:
        crash.set()
        await worker.stop(1.0)
    [(exc, rolled_back, running)] = told
    assert isinstance(exc, RuntimeError)
    assert rolled_back == ["rolled back"]
    assert running == [f"partition-{_LABEL}"]  # its stages ended before the daemon was told
    assert host.commits == []


async def test_a_batch_with_no_outcome_record_to_send_writes_none(applier: Applier) -> None:
    """Replies only (no outcomes topic): a batch in which no event asked for a reply has
    no outcome record, and the outcome sink is not called for it (an empty write is a
    request to the broker for nothing, and a sink failing meanwhile would hold the
    partition for nothing)."""
    host = FakeHost(applier)
    host.config = replace(CONFIG, replies=ReplyPolicy(frozenset({"r"}), every_outcome=False))
    assert host.outcomes is not None
    host.outcomes.fail_next(1)  # any call would be a failed attempt, retried and reported
    await _run(host, [_event(0, _consumer(45)), _record(1, b"not json")])
    assert host.fatal_errors == []
    assert host.outcomes.attempts == 0
    assert host.outcomes.messages == []
    assert host.failed == []
    assert host.commits == [(2, 1, 0)]


async def test_a_batchs_outcome_records_share_the_moment_the_worker_took(
    applier: Applier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every outcome record of a batch has the same ``processed_at``: the moment the
    worker took once for the batch, not each record's own reading of a clock (here an
    encoder's clock that moves a second at each reading and is far in the past)."""
    readings: list[datetime] = []

    class Ticking(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Ticking:
            readings.append(datetime(2001, 1, 1, tzinfo=UTC))
            moment = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(seconds=len(readings))
            return cls.fromtimestamp(moment.timestamp(), tz)

    monkeypatch.setattr(records, "datetime", Ticking)
    before = datetime.now(UTC)
    host = FakeHost(applier)
    consumer = _consumer(46)
    batch = [_event(0, consumer), _record(1, b"not json"), _event(2, consumer), _event(3, consumer)]
    await _run(host, batch)
    assert host.fatal_errors == []
    assert host.outcomes is not None
    stamps = {json.loads(m.value)["processed_at"] for m in host.outcomes.messages}
    assert len(host.outcomes.messages) == 4
    assert len(stamps) == 1
    [stamp] = stamps
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)
