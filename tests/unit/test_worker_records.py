"""What the partition worker writes for each event, field by field, over in-memory sinks
and a real ``Applier`` on SQLite (no broker).

An application waiting for its event's outcome reads the outcome record; an operator
after an incident reads the dead letter's headers.  Both must say what happened to which
event and where it was read (DESIGN.md "Outcomes", docs/contract.md): the outcome, its
reason, the generation after, the original outcome of a duplicate, the state after, the
source; for a dead letter the original key, value and headers, the reason, the attempts.
``test_partition_worker.py`` holds the order and the commits; this file holds the
content.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from service.apply.applier import Applier
from service.contract.records import parse_dead_letter_headers
from service.daemon.retries import install_retry_hooks
from service.daemon.timeline import BOUNDARIES, Timeline
from service.daemon.worker import PartitionWorker
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.kafka.records import UndecodableRecord
from service.testing.model import event_doc
from service.testing.polling import poll
from tests.unit.test_partition_worker import TP, FakeHost, _consumer, _event, _record, _run


def _event_record(offset: int, doc: dict[str, Any], headers: list[tuple[str, bytes]]) -> Any:
    record = _record(offset, json.dumps(doc).encode(), doc["consumer_uuid"].encode())
    record.headers.extend(headers)
    return record


def _documents(host: FakeHost) -> dict[int, tuple[bytes | None, dict[str, Any]]]:
    assert host.outcomes is not None
    found = {}
    for message in host.outcomes.messages:
        doc = json.loads(message.value)
        found[doc["source"]["offset"]] = (message.key, doc)
    return found


def _recent(stamp: str, before: datetime) -> bool:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return before - timedelta(seconds=1) <= moment <= datetime.now(UTC) + timedelta(seconds=1)


async def test_each_outcome_record_says_what_happened_to_its_event_and_where_it_was_read(
    applier: Applier,
) -> None:
    """Applied, duplicate, rejected and invalid in one batch: every field of each
    record, keyed by its event id (an unreadable record's has no key)."""
    consumer, other = _consumer(101), _consumer(102)
    created = event_doc(consumer, expected=None, project="p", user="u")
    stale = event_doc(other, expected=5, project="p", user="u")
    records = [
        _event_record(20, created, []),
        _record(21, b"not json", consumer.encode()),
        _event_record(22, created, []),  # the same event again: a duplicate
        _event_record(23, stale, []),
    ]
    before = datetime.now(UTC)
    host = FakeHost(applier)
    await _run(host, records)
    assert host.fatal_errors == []
    documents = _documents(host)
    # One each, in offset order, the invalid one in its place among the others.
    assert host.outcomes is not None
    assert [json.loads(m.value)["source"]["offset"] for m in host.outcomes.messages] == [
        20,
        21,
        22,
        23,
    ]

    key, applied = documents[20]
    assert key == created["event_id"].encode()
    assert applied["schema_version"] == 1
    assert applied["event_id"] == created["event_id"]
    assert applied["consumer_uuid"] == consumer
    assert (applied["outcome"], applied["reason"], applied["generation_after"]) == (
        "applied",
        None,
        1,
    )
    assert "original_outcome" not in applied
    assert applied["source"] == {"topic": TP.topic, "partition": TP.partition, "offset": 20}
    assert _recent(applied["processed_at"], before)
    assert applied["state_after"]["generation"] == 1
    assert applied["state_after"]["project_id"] == "p"

    key, duplicate = documents[22]
    assert key == created["event_id"].encode()
    assert (duplicate["outcome"], duplicate["original_outcome"]) == ("duplicate", "applied")
    assert duplicate["generation_after"] == 1
    assert duplicate["consumer_uuid"] == consumer

    key, rejected = documents[23]
    assert key == stale["event_id"].encode()
    assert (rejected["outcome"], rejected["reason"]) == ("rejected", "consumer_not_found")
    assert rejected["consumer_uuid"] == other
    assert rejected["generation_after"] is None

    key, invalid = documents[21]
    assert key is None
    assert (invalid["event_id"], invalid["consumer_uuid"]) == (None, None)
    assert (invalid["outcome"], invalid["reason"]) == ("invalid", "not_json")
    assert invalid["message"]  # what was wrong with it, for whoever sent it
    assert invalid["source"] == {"topic": TP.topic, "partition": TP.partition, "offset": 21}
    assert _recent(invalid["processed_at"], before)


async def test_an_invalid_records_dead_letter_keeps_the_record_and_says_why(
    applier: Applier,
) -> None:
    """The dead letter of a refused record is the record itself (key, value, its own
    headers first) followed by the error headers: class, reason, where it was read, one
    attempt; an undecodable record's says what could not be read."""
    broken = _record(30, b"{not json", b"some-key")
    broken.headers.append(("app-header", b"kept"))
    undecodable = UndecodableRecord(
        topic=TP.topic,
        partition=TP.partition,
        offset=31,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"\x00\x01",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=2,
        headers=[],
        error="a header name cut short",
    )
    host = FakeHost(applier)
    await _run(host, [broken, undecodable])
    assert host.fatal_errors == []
    first, second = host.dead_letters.letters
    assert (first.key, first.value) == (b"some-key", b"{not json")
    assert first.headers[0] == ("app-header", b"kept")
    assert (first.reason, first.invalid) == ("not_json", True)
    assert first.origin == EventSource(TP.topic, TP.partition, 30)
    parsed = parse_dead_letter_headers(first.headers)
    assert (parsed.error_class, parsed.error_reason) == ("invalid", "not_json")
    assert (parsed.origin_topic, parsed.origin_partition, parsed.origin_offset) == (
        TP.topic,
        str(TP.partition),
        "30",
    )
    assert parsed.attempts == "1"
    assert (second.reason, second.invalid) == ("undecodable", True)
    assert second.origin.offset == 31
    assert "a header name cut short" in parse_dead_letter_headers(second.headers).error_message


class _LosingApplier:
    """The real applier, but the events of ``losing`` lose every compare-and-swap (the
    outcome the applier reports after its bounded retries: FAILED, with its attempts)."""

    def __init__(self, applier: Applier, losing: set[str], attempts: int) -> None:
        self.applier = applier
        self.losing = losing
        self.attempts = attempts

    async def apply_batch(self, events: list[tuple[ConsumerEvent, EventSource]]) -> list[Outcome]:
        outcomes = await self.applier.apply_batch(events)
        return [
            replace(
                outcome,
                kind=OutcomeKind.FAILED,
                reason=Reason.CAS_RETRIES_EXHAUSTED,
                generation_after=None,
                attempts=self.attempts,
                state_after=None,
            )
            if outcome.event_id in self.losing
            else outcome
            for outcome in outcomes
        ]


async def test_an_event_that_lost_every_compare_and_swap_is_dead_lettered_with_its_attempts(
    applier: Applier,
) -> None:
    """A FAILED event's dead letter is its record with ``failed`` headers: the reason,
    the number of attempts it lost, when; its outcome record says ``failed`` too.  The
    applied event beside it is not dead-lettered."""
    losing = event_doc(_consumer(103), project="p", user="u")
    winning = event_doc(_consumer(104), project="p", user="u")
    losing_too = event_doc(_consumer(112), project="p", user="u")
    record = _event_record(40, losing, [("trace", b"t-1")])
    before = datetime.now(UTC)
    host = FakeHost(
        _LosingApplier(applier, {losing["event_id"], losing_too["event_id"]}, attempts=7)
    )
    await _run(host, [record, _event_record(41, winning, []), _event_record(42, losing_too, [])])
    assert host.fatal_errors == []
    letter, later = host.dead_letters.letters
    assert later.origin.offset == 42  # past the applied event, the next loser is found too
    assert (letter.key, letter.value) == (record.key, record.value)
    assert (letter.reason, letter.invalid) == ("cas_retries_exhausted", False)
    assert letter.origin == EventSource(TP.topic, TP.partition, 40)
    assert letter.headers[0] == ("trace", b"t-1")
    parsed = parse_dead_letter_headers(letter.headers)
    assert (parsed.error_class, parsed.error_reason) == ("failed", "cas_retries_exhausted")
    assert parsed.attempts == "7"
    assert "lost 7 times" in parsed.error_message
    assert parsed.origin_offset == "40"
    assert _recent(parsed.failed_at, before) and _recent(parsed.first_failed_at, before)
    documents = _documents(host)
    assert documents[40][1]["outcome"] == "failed"
    assert documents[41][1]["outcome"] == "applied"
    assert documents[42][1]["outcome"] == "failed"


async def test_the_timeline_stamps_each_event_at_each_boundary_in_order(
    applier: Applier, tmp_path: Path
) -> None:
    """The latency benchmark (``CONSUMERGEN_TIMELINE_FILE``) joins the daemon's stamps by
    partition and offset: every event, valid or not, crosses the five boundaries once
    each, in the order ``BOUNDARIES`` names them, at non-decreasing times."""
    host = FakeHost(applier)
    timeline = Timeline(tmp_path / "timeline.csv")
    host.metrics.stages.timeline = timeline
    records = [_event(50, _consumer(105)), _record(51, b"not json"), _event(52, _consumer(106))]
    await _run(host, records)
    assert host.fatal_errors == []
    timeline.write()
    lines = (tmp_path / "timeline.csv").read_text().splitlines()[1:]
    for offset in (50, 51, 52):
        crossed = [line.split(",") for line in lines if line.split(",")[1] == str(offset)]
        assert [boundary for _, _, boundary, _ in crossed] == list(BOUNDARIES), offset
        assert {partition for partition, _, _, _ in crossed} == {str(TP.partition)}
        times = [float(moment) for _, _, _, moment in crossed]
        assert times == sorted(times)


async def test_a_batch_whose_commit_the_group_refused_is_accounted_but_not_timed(
    applier: Applier,
) -> None:
    """When the group has moved on (the commit answers False: the partition went to
    another member), the batch is still reported (logged, counted) and no longer in
    progress, but its events' end-to-end latency is not observed and the worker does not
    claim the offset as committed: the next owner will process them again."""
    host = FakeHost(applier)

    async def refused(tp: TopicPartition, offset: int) -> bool:
        host.commits.append((offset, len(host.dead_letters.letters), 0))
        host.committed_all.set()
        return False

    host.commit = refused  # type: ignore[method-assign]
    worker = await _run(host, [_event(60, _consumer(107)), _event(61, _consumer(108))])
    assert host.fatal_errors == []
    assert [offset for offset, _, _ in host.commits] == [62]
    assert host.batches == [[60, 61]]
    assert worker.committed is None
    registry = host.metrics.registry
    assert registry.get_sample_value("consumergen_event_latency_seconds_count") == 0
    assert registry.get_sample_value("consumergen_batches_in_progress") == 0


async def test_a_workers_tasks_are_named_for_its_partition_and_stage(applier: Applier) -> None:
    """A stuck daemon is read from its task dump (``asyncio.all_tasks``, py-spy, a
    "Task exception was never retrieved" line): each task names its partition and stage."""
    host = FakeHost(applier)
    worker = PartitionWorker(host, TopicPartition("events", 7))
    worker.start()
    try:
        await poll(
            lambda: (
                {"apply-events/7", "send-events/7", "commit-events/7"}
                <= {task.get_name() for task in asyncio.all_tasks()}
            ),
            5,
            "the worker's three stages running",
        )
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "partition-events/7" in names
    finally:
        assert await worker.stop(1.0)
    assert not {
        name for name in (t.get_name() for t in asyncio.all_tasks()) if name.endswith("events/7")
    }


class _SlowApplier:
    """The real applier, after ``delay`` seconds."""

    def __init__(self, applier: Applier, delay: float) -> None:
        self.applier = applier
        self.delay = delay

    async def apply_batch(self, events: list[tuple[ConsumerEvent, EventSource]]) -> list[Outcome]:
        await asyncio.sleep(self.delay)
        return await self.applier.apply_batch(events)


async def test_a_batchs_seconds_run_from_taking_it_to_its_commit(applier: Applier) -> None:
    """What the worker hands the host for ``consumergen_batch_seconds`` and the "batch
    committed" line: how long a batch took from being taken to its offset commit, so at
    least its transaction's time."""
    seconds: list[float] = []

    class TimingHost(FakeHost):
        def record_batch(self, tp: Any, batch: Any, outcomes: Any, dead: Any, took: float) -> None:
            seconds.append(took)
            super().record_batch(tp, batch, outcomes, dead, took)

    host = TimingHost(_SlowApplier(applier, 0.3))
    await _run(host, [_event(70, _consumer(109))])
    assert host.fatal_errors == []
    [took] = seconds
    assert 0.3 <= took < 30


async def test_a_retried_commit_takes_the_offset_acknowledged_meanwhile(applier: Applier) -> None:
    """While the broker refuses an offset commit, later batches are acknowledged; the
    retry commits the latest acknowledged offset, not the stale one and then the next:
    an outage leaves no queue of stale commits behind it."""
    host = FakeHost(applier)
    assert host.outcomes is not None
    outcomes = host.outcomes
    succeeded: list[int] = []
    attempted: list[int] = []
    first_refused = asyncio.Event()

    async def commit(tp: TopicPartition, offset: int) -> bool:
        attempted.append(offset)
        if len(outcomes.messages) < 2:  # the second batch not acknowledged yet
            first_refused.set()
            raise KafkaConnectionError("the coordinator is away")
        succeeded.append(offset)
        if offset >= 82:
            host.committed_all.set()
        return True

    host.commit = commit  # type: ignore[method-assign]
    install_retry_hooks()
    worker = PartitionWorker(host, TP)
    worker.start()
    try:
        worker.feed([_event(80, _consumer(110))])
        await asyncio.wait_for(first_refused.wait(), 10)
        worker.feed([_event(81, _consumer(111))])
        await asyncio.wait_for(host.committed_all.wait(), 10)
    finally:
        assert await worker.stop(1.0)
    assert host.fatal_errors == []
    assert attempted[0] == 81
    assert succeeded == [82]
    assert worker.committed == 82
    assert host.batches == [[80], [81]]


@pytest.mark.parametrize("every_outcome", [True, False])
async def test_a_reply_is_sent_to_each_request_whatever_comes_before_it(
    applier: Applier, every_outcome: bool
) -> None:
    """A request for a reply gets it even after records that asked for none, valid or
    invalid; an invalid record whose headers could be read is answered ``invalid``.
    Without an outcomes topic (``every_outcome`` false) only the requests get a record."""
    from service.contract.replies import ReplyPolicy, ReplyRoute, request_headers

    host = FakeHost(applier)
    host.config = replace(host.config, replies=ReplyPolicy(frozenset({"r"}), every_outcome))
    plain = event_doc(_consumer(113), project="p", user="u")
    asked = event_doc(_consumer(114), project="p", user="u")
    broken = _record(93, b"not json")
    broken.headers.extend(request_headers("r", 1, b"corr-broken"))
    records = [
        _event_record(90, plain, []),
        _event_record(91, asked, request_headers("r", 0, b"corr-asked")),
        _record(92, b"[]"),
        broken,
    ]
    await _run(host, records)
    assert host.fatal_errors == []
    assert host.outcomes is not None
    routes = {json.loads(m.value)["source"]["offset"]: m.reply for m in host.outcomes.messages}
    answered = {91: ReplyRoute("r", 0, b"corr-asked"), 93: ReplyRoute("r", 1, b"corr-broken")}
    assert routes == ({90: None, 92: None} | answered if every_outcome else answered)
    invalid = next(m for m in host.outcomes.messages if m.reply == answered[93])
    assert json.loads(invalid.value)["outcome"] == "invalid"
