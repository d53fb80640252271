"""The partition worker without a broker: in-memory sinks, a fake commit, a real
``Applier`` on a temporary SQLite database.

What must hold (``service/daemon/worker.py``): records of a partition are processed in
offset order; the offset is committed only after the database commit and after both
sinks acknowledged; an infrastructure failure of a sink pauses the partition and
retries the *same* batch, committing nothing meanwhile; a bug stops loudly.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from service.apply.applier import Applier
from service.daemon.metrics import DaemonMetrics
from service.daemon.retries import install_retry_hooks
from service.daemon.worker import PartitionWorker, WorkerConfig
from service.domain.outcomes import Outcome
from service.sinks.base import DeadLetter
from service.sinks.memory import MemoryDeadLetterSink, MemoryOutcomeSink
from service.testing.fake_kafka import fetched_record
from service.testing.model import event_doc
from service.testing.polling import poll

TP = TopicPartition("events", 0)
CONFIG = WorkerConfig(
    batch_max_events=50, max_event_bytes=65_536, retry_wait_initial=0.01, retry_wait_max=0.02
)


def _record(offset: int, value: bytes, key: bytes | None = None) -> ConsumerRecord:
    return fetched_record(TP, offset, value, key)


def _event(offset: int, consumer: str) -> ConsumerRecord:
    doc = event_doc(consumer, project="p", user="u")
    return _record(offset, json.dumps(doc).encode(), consumer.encode())


def _consumer(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@dataclass
class FakeHost:
    """A ``WorkerHost`` that records what the worker asked of it."""

    applier: Any
    config: WorkerConfig = field(
        default_factory=lambda: WorkerConfig(
            batch_max_events=50,
            max_event_bytes=65_536,
            retry_wait_initial=0.01,
            retry_wait_max=0.02,
        )
    )
    dead_letters: MemoryDeadLetterSink = field(default_factory=MemoryDeadLetterSink)
    outcomes: MemoryOutcomeSink | None = field(default_factory=MemoryOutcomeSink)
    metrics: DaemonMetrics = field(default_factory=DaemonMetrics)
    #: (offset, letters written, outcome records written) at each commit.
    commits: list[tuple[int, int, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    recovered: list[tuple[str, bool]] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)
    fatal_errors: list[BaseException] = field(default_factory=list)
    committed_all: asyncio.Event = field(default_factory=asyncio.Event)
    expect_offset: int = -1

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        assert self.outcomes is not None
        self.commits.append((offset, len(self.dead_letters.letters), len(self.outcomes.messages)))
        if offset >= self.expect_offset:
            self.committed_all.set()
        return True

    def relieve_backpressure(self, tp: TopicPartition, backlog: int) -> None:
        pass

    def infrastructure_failed(self, tp: TopicPartition, step: str, exc: BaseException) -> None:
        self.failed.append((step, type(exc).__name__))

    def infrastructure_recovered(self, tp: TopicPartition, step: str, *, resumed: bool) -> None:
        self.recovered.append((step, resumed))

    def record_batch(
        self,
        tp: TopicPartition,
        batch: list[ConsumerRecord],
        outcomes: list[Outcome],
        dead: list[DeadLetter],
        seconds: float,
    ) -> None:
        self.batches.append([r.offset for r in batch])

    def fatal(self, exc: BaseException) -> None:
        self.fatal_errors.append(exc)
        self.committed_all.set()


async def _run(host: FakeHost, records: list[ConsumerRecord]) -> PartitionWorker:
    install_retry_hooks()
    host.expect_offset = records[-1].offset + 1
    worker = PartitionWorker(host, TP)
    worker.start()
    worker.feed(records)
    await asyncio.wait_for(host.committed_all.wait(), 10)
    await worker.stop(1.0)
    return worker


def _outcome_offsets(host: FakeHost) -> list[int]:
    assert host.outcomes is not None
    return [json.loads(m.value)["source"]["offset"] for m in host.outcomes.messages]


async def test_a_batch_is_committed_in_order_after_both_sinks_acknowledged(
    applier: Applier,
) -> None:
    host = FakeHost(applier)
    records = [_event(10, _consumer(1)), _record(11, b"not json"), _event(12, _consumer(2))]
    worker = await _run(host, records)
    assert host.fatal_errors == []
    # One batch, committed after the offset of its last record, with its one dead letter
    # and its three outcome records already written.
    assert host.commits == [(13, 1, 3)]
    assert worker.committed == 13
    assert host.batches == [[10, 11, 12]]
    assert [letter.origin.offset for letter in host.dead_letters.letters] == [11]
    assert host.dead_letters.letters[0].invalid
    kinds = {
        json.loads(m.value)["source"]["offset"]: json.loads(m.value)["outcome"]
        for m in host.outcomes.messages  # type: ignore[union-attr]
    }
    assert kinds == {10: "applied", 11: "invalid", 12: "applied"}


async def test_records_of_a_partition_are_applied_in_offset_order(applier: Applier) -> None:
    host = FakeHost(applier)
    host.config = WorkerConfig(
        batch_max_events=2, max_event_bytes=65_536, retry_wait_initial=0.01, retry_wait_max=0.02
    )
    consumer = _consumer(3)
    records = [_event(offset, consumer) for offset in range(7)]
    await _run(host, records)
    assert host.fatal_errors == []
    flat = [offset for batch in host.batches for offset in batch]
    assert flat == list(range(7))
    assert all(len(batch) <= 2 for batch in host.batches)
    assert [c[0] for c in host.commits] == [batch[-1] + 1 for batch in host.batches]
    assert sorted(_outcome_offsets(host)) == _outcome_offsets(host)
    # The same consumer, unconditionally, seven times: each a new generation, in order.
    generations = [
        json.loads(m.value)["generation_after"]
        for m in host.outcomes.messages  # type: ignore[union-attr]
    ]
    assert generations == sorted(generations) and len(set(generations)) == 7


@pytest.mark.parametrize("sink", ["dead_letters", "outcomes"])
async def test_an_unavailable_sink_pauses_and_retries_the_same_batch(
    applier: Applier, sink: str
) -> None:
    host = FakeHost(applier)
    getattr(host, sink).fail_next(3)
    records = [_event(0, _consumer(4)), _record(1, b"{}")]
    await _run(host, records)
    assert host.fatal_errors == []
    step = "dead_letter" if sink == "dead_letters" else "outcomes"
    assert host.failed == [(step, "SinkUnavailable")]
    assert host.recovered == [(step, True)]
    assert getattr(host, sink).attempts == 4
    # Nothing was committed while the sink failed; once it took the batch, the one
    # commit came, with everything written exactly once.
    assert host.commits == [(2, 1, 2)]
    retried = host.metrics.registry.get_sample_value("consumergen_retries_total", {"step": step})
    assert retried == 3


async def test_a_bug_in_a_sink_stops_loudly_and_commits_nothing(applier: Applier) -> None:
    host = FakeHost(applier)
    assert host.outcomes is not None
    host.outcomes.fail_with(RuntimeError("a bug in a sink"))
    await _run(host, [_event(0, _consumer(5))])
    assert [type(e) for e in host.fatal_errors] == [RuntimeError]
    assert host.commits == []
    assert host.outcomes.attempts == 1  # a bug is not retried
    assert host.failed == []


async def test_without_an_outcome_sink_only_dead_letters_are_written(applier: Applier) -> None:
    host = FakeHost(applier, outcomes=None)

    async def commit(tp: TopicPartition, offset: int) -> bool:
        host.commits.append((offset, len(host.dead_letters.letters), 0))
        host.committed_all.set()
        return True

    host.commit = commit  # type: ignore[method-assign]
    await _run(host, [_record(0, b"[]"), _event(1, _consumer(6))])
    assert host.commits == [(2, 1, 0)]


async def test_a_committed_batch_observes_each_valid_events_latency(applier: Applier) -> None:
    """``consumergen_event_latency_seconds`` counts a valid event once its offset is
    committed (an invalid one has no trusted ``occurred_at``), and the in-progress gauge
    covers the batch from taking it to its commit."""
    host = FakeHost(applier)
    seen_in_progress: list[float | None] = []
    commit = host.commit

    async def observing_commit(tp: TopicPartition, offset: int) -> bool:
        seen_in_progress.append(
            host.metrics.registry.get_sample_value("consumergen_batches_in_progress")
        )
        return await commit(tp, offset)

    host.commit = observing_commit  # type: ignore[method-assign]
    records = [_event(0, _consumer(7)), _record(1, b"not json"), _event(2, _consumer(8))]
    await _run(host, records)
    assert host.fatal_errors == []
    registry = host.metrics.registry
    assert registry.get_sample_value("consumergen_event_latency_seconds_count") == 2
    # The events were made just now: each took well under the largest finite bucket.
    assert (
        registry.get_sample_value("consumergen_event_latency_seconds_bucket", {"le": "3600.0"}) == 2
    )
    assert seen_in_progress == [1.0]
    assert registry.get_sample_value("consumergen_batches_in_progress") == 0


class _RecordingApplier:
    """The real applier, noting which offsets each call applied and how many commits
    had returned by then; ``applied[n]`` is set once the n-th call returned."""

    def __init__(self, applier: Applier, host: FakeHost) -> None:
        self.applier = applier
        self.host = host
        self.calls: list[tuple[list[int], int]] = []
        self.applied = [asyncio.Event() for _ in range(4)]

    async def apply_batch(self, items: Any) -> list[Outcome]:
        offsets = [source.offset for _, source in items]
        outcomes = await self.applier.apply_batch(items)
        self.calls.append((offsets, len(self.host.commits)))
        self.applied[len(self.calls) - 1].set()
        return outcomes


def _pipelined_host(applier: Applier) -> tuple[FakeHost, _RecordingApplier, asyncio.Event]:
    """A host with batches of 2 whose first commit waits for the returned event."""
    host = FakeHost(applier)
    host.config = WorkerConfig(
        batch_max_events=2, max_event_bytes=65_536, retry_wait_initial=0.01, retry_wait_max=0.02
    )
    recording = _RecordingApplier(applier, host)
    host.applier = recording
    release = asyncio.Event()
    plain_commit = host.commit

    async def commit(tp: TopicPartition, offset: int) -> bool:
        if not host.commits:
            host.commit_started.set()
            await release.wait()
        return await plain_commit(tp, offset)

    host.commit_started = asyncio.Event()  # type: ignore[attr-defined]
    host.commit = commit  # type: ignore[method-assign]
    return host, recording, release


async def test_the_next_batch_is_applied_and_sent_while_the_previous_one_commits(
    applier: Applier,
) -> None:
    """The pipeline: batch 2 is decoded, applied and its outcome records written while
    batch 1's offset commit is in flight (an offset commit is off the critical path,
    issue 22: until then batch 2's records waited for it); outcome records stay in offset
    order, and each offset is committed only after its own batch's sinks."""
    install_retry_hooks()
    host, recording, release = _pipelined_host(applier)
    consumer = _consumer(7)
    host.expect_offset = 4
    worker = PartitionWorker(host, TP)
    worker.start()
    try:
        worker.feed([_event(0, consumer), _event(1, consumer)])
        await asyncio.wait_for(host.commit_started.wait(), 10)  # type: ignore[attr-defined]
        # batch 1's records were written before its commit was asked for
        assert _outcome_offsets(host) == [0, 1]
        worker.feed([_event(2, consumer), _event(3, consumer)])
        await asyncio.wait_for(recording.applied[1].wait(), 10)
        # Batch 2 is in the database and batch 1's commit has not returned; batch 2's
        # outcome records do not wait for that commit.
        assert recording.calls == [([0, 1], 0), ([2, 3], 0)]
        await poll(lambda: len(_outcome_offsets(host)) == 4, 10, "batch 2 written", every=0.01)
        assert host.commits == []
        release.set()
        await asyncio.wait_for(host.committed_all.wait(), 10)
    finally:
        await worker.stop(1.0)
    assert host.fatal_errors == []
    # each commit came after its own batch's records (and, here, the next one's too)
    assert host.commits == [(2, 0, 4), (4, 0, 4)]
    assert _outcome_offsets(host) == [0, 1, 2, 3]
    assert worker.committed == 4


async def test_a_stop_with_two_batches_in_flight_finishes_both(applier: Applier) -> None:
    install_retry_hooks()
    host, recording, release = _pipelined_host(applier)
    consumer = _consumer(8)
    worker = PartitionWorker(host, TP)
    worker.start()
    worker.feed([_event(0, consumer), _event(1, consumer)])
    await asyncio.wait_for(host.commit_started.wait(), 10)  # type: ignore[attr-defined]
    worker.feed([_event(2, consumer), _event(3, consumer), _event(4, consumer)])
    await asyncio.wait_for(recording.applied[1].wait(), 10)
    stopping = asyncio.create_task(worker.stop(10.0))
    release.set()
    assert await asyncio.wait_for(stopping, 15) is True
    # Both batches in flight were committed; the record still queued was not taken.
    assert [c[0] for c in host.commits] == [2, 4]
    assert [call[0] for call in recording.calls] == [[0, 1], [2, 3]]
    assert worker.committed == 4
    assert host.fatal_errors == []


async def test_a_bug_in_the_next_batch_commits_nothing_past_the_previous_one(
    applier: Applier,
) -> None:
    install_retry_hooks()
    host, recording, release = _pipelined_host(applier)
    consumer = _consumer(9)
    worker = PartitionWorker(host, TP)
    worker.start()
    worker.feed([_event(0, consumer), _event(1, consumer)])
    await asyncio.wait_for(host.commit_started.wait(), 10)  # type: ignore[attr-defined]

    async def broken(items: Any) -> list[Outcome]:
        raise RuntimeError("a bug in the applier")

    recording.apply_batch = broken  # type: ignore[method-assign]
    worker.feed([_event(2, consumer)])
    try:
        await asyncio.wait_for(host.committed_all.wait(), 10)  # set by fatal
    finally:
        release.set()
        await worker.stop(1.0)
    assert [type(e) for e in host.fatal_errors] == [RuntimeError]
    assert host.commits == []  # batch 1's commit was abandoned with the worker


async def test_a_stop_waits_for_the_batch_in_flight_only(applier: Applier) -> None:
    """A stop while the following batch is being applied cancels that one (its offset is
    not committed, so its events come again) and finishes the one in flight: a stop takes
    no longer with the pipeline than without it."""
    install_retry_hooks()
    host, recording, release = _pipelined_host(applier)
    consumer = _consumer(10)
    entered = asyncio.Event()
    real_apply = recording.apply_batch

    async def apply_or_hang(items: Any) -> list[Outcome]:
        if recording.calls:  # the following batch: hangs until cancelled
            entered.set()
            await asyncio.Event().wait()
        return await real_apply(items)

    recording.apply_batch = apply_or_hang  # type: ignore[method-assign]
    worker = PartitionWorker(host, TP)
    worker.start()
    worker.feed([_event(0, consumer), _event(1, consumer)])
    await asyncio.wait_for(host.commit_started.wait(), 10)  # type: ignore[attr-defined]
    worker.feed([_event(2, consumer), _event(3, consumer)])
    await asyncio.wait_for(entered.wait(), 10)
    stopping = asyncio.create_task(worker.stop(10.0))
    release.set()
    assert await asyncio.wait_for(stopping, 15) is True
    assert [c[0] for c in host.commits] == [2]
    assert [call[0] for call in recording.calls] == [[0, 1]]
    assert worker.committed == 2
    assert _outcome_offsets(host) == [0, 1]
    assert host.fatal_errors == []


async def test_a_worker_waiting_for_records_stops_without_abandoning_anything(
    applier: Applier,
) -> None:
    """A stop finds the worker waiting for its next record (before any, and after a
    batch): the wait ends at the stop, nothing is abandoned (``stop`` is True within a
    grace it never needs)."""
    for records in ([], [_event(0, _consumer(20))]):
        host = FakeHost(applier)
        worker = PartitionWorker(host, TP)
        worker.start()
        if records:
            host.expect_offset = 1
            worker.feed(records)
            await asyncio.wait_for(host.committed_all.wait(), 10)
        await asyncio.sleep(0.05)  # the apply stage is back waiting for a record
        assert await asyncio.wait_for(worker.stop(5.0), 15) is True
        assert host.batches == ([[0]] if records else [])
        assert host.fatal_errors == []


async def test_later_batches_are_applied_while_an_earlier_ones_records_wait_for_their_ack(
    applier: Applier,
) -> None:
    """A partition's next batch goes into the database as soon as the previous batch's
    transaction committed, not after an earlier batch's outcome records were
    acknowledged and its offset committed (issue 22: until then the third batch waited
    for the first one's tail); the records are still written in offset order, and
    nothing is committed past a batch whose records are not acknowledged."""
    install_retry_hooks()
    host = FakeHost(applier)
    host.config = WorkerConfig(
        batch_max_events=2, max_event_bytes=65_536, retry_wait_initial=0.01, retry_wait_max=0.02
    )
    recording = _RecordingApplier(applier, host)
    host.applier = recording
    assert host.outcomes is not None
    sink = host.outcomes
    write = sink.write_outcomes
    acknowledge = asyncio.Event()
    held = asyncio.Event()

    async def slow_first_write(messages: Any) -> None:
        if not held.is_set():
            held.set()
            await acknowledge.wait()  # batch 1's acknowledgement does not come yet
        await write(messages)

    sink.write_outcomes = slow_first_write  # type: ignore[method-assign]
    consumer = _consumer(11)
    host.expect_offset = 6
    worker = PartitionWorker(host, TP)
    worker.start()
    try:
        worker.feed([_event(0, consumer), _event(1, consumer)])
        await asyncio.wait_for(held.wait(), 10)
        worker.feed([_event(2, consumer), _event(3, consumer)])
        await asyncio.wait_for(recording.applied[1].wait(), 10)
        worker.feed([_event(4, consumer), _event(5, consumer)])
        await asyncio.wait_for(recording.applied[2].wait(), 10)
        # batches 2 and 3 are in the database while batch 1's records wait for their ack
        assert [call[0] for call in recording.calls] == [[0, 1], [2, 3], [4, 5]]
        assert _outcome_offsets(host) == [] and host.commits == []
        acknowledge.set()
        await asyncio.wait_for(host.committed_all.wait(), 10)
    finally:
        await worker.stop(1.0)
    assert host.fatal_errors == []
    assert _outcome_offsets(host) == [0, 1, 2, 3, 4, 5]
    assert [c[0] for c in host.commits][-1] == 6
    assert all(outcomes >= offset for offset, _, outcomes in host.commits)


@pytest.mark.parametrize("every_outcome", [True, False])
async def test_replies_go_only_to_allowed_topics_and_a_refusal_is_counted(
    applier: Applier, every_outcome: bool
) -> None:
    """A request naming a topic the daemon does not allow gets no reply route (its
    outcome record still goes to the outcomes topic when there is one) and is counted;
    without an outcomes topic only the events that get a reply have a record."""
    from dataclasses import replace

    from service.contract.replies import ReplyPolicy, ReplyRoute, request_headers

    refused: list[int] = []
    host = FakeHost(applier)
    host.config = replace(
        CONFIG,
        replies=ReplyPolicy(
            frozenset({"r"}), every_outcome=every_outcome, refused=lambda: refused.append(1)
        ),
    )
    asked, foreign, plain = (
        _event(0, _consumer(8)),
        _event(1, _consumer(9)),
        _event(2, _consumer(10)),
    )
    asked.headers.extend(request_headers("r", 0, b"corr-a"))
    foreign.headers.extend(request_headers("consumer-events", 0, b"corr-f"))
    await _run(host, [asked, foreign, plain])
    assert host.fatal_errors == []
    assert refused == [1]
    assert host.outcomes is not None
    routes = {json.loads(m.value)["source"]["offset"]: m.reply for m in host.outcomes.messages}
    if every_outcome:
        assert routes == {0: ReplyRoute("r", 0, b"corr-a"), 1: None, 2: None}
    else:
        assert routes == {0: ReplyRoute("r", 0, b"corr-a")}
