"""``replay`` (service.replay.runner) without a broker: records from a hand-made source
through the daemon's gate and apply path into SQLite, a dry run that writes nothing, a
republish onto aiokafka's producer faked at its client API, and what the report counts.
The topic-reading end of replay is in test_topic_source.py; the broker cases in
test_replay_topic.py and test_replay_dlq.py."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from service.config import Settings, load_settings
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome
from service.kafka.clients import BrokerUnavailable
from service.replay import runner
from service.replay.runner import Mode, ReplayReport, replay
from service.store.errors import TransientDatabaseError
from service.testing.fake_aiokafka import FakeCluster, producer_class
from tests.apply.helpers import Db, migrated
from tests.log_lines import logged
from tests.replay.fakes import ListSource, RecordingProgress, consumer_id, record, upsert_doc

C1, C2 = consumer_id(1), consumer_id(2)


def mixed() -> ListSource:
    """Applied, duplicate, rejected and four kinds of invalid record, in two chunks."""
    create = upsert_doc(C1)
    return ListSource(
        [
            [
                record(10, create),
                record(11, create),  # the same event again: a duplicate
                record(12, upsert_doc(C1, expected_generation=5)),
                record(13, value=b"not json", key=C1.encode()),
            ],
            [
                record(14, upsert_doc(C2), key=C1.encode(), partition=1),
                record(15, value=None, key=None, undecodable="header #1 name is not UTF-8"),
                record(16, upsert_doc(C2, project_id="p" * 3000), partition=1),
                record(17, upsert_doc(C2), partition=1),
            ],
        ]
    )


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    async with migrated(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}", max_event_bytes=2048) as d:
        yield d


async def test_apply_counts_every_outcome_and_every_invalid_record_by_reason(db: Db) -> None:
    report = await replay(mixed(), settings=db.settings, mode=Mode.APPLY, engine=db.engine)
    assert report.read == 8
    assert report.outcomes == Counter(
        {("applied", None): 2, ("duplicate", None): 1, ("rejected", "generation_conflict"): 1}
    )
    assert report.invalid == Counter(
        {"not_json": 1, "key_mismatch": 1, "undecodable": 1, "too_large": 1}
    )
    assert (report.failed, report.problems) == (0, 4)
    assert (report.count("applied"), report.count("rejected"), report.count("failed")) == (2, 1, 0)
    assert not report.dry_run and report.source == "hand-made records"
    assert await db.generation(C1) == (1, False)
    assert await db.generation(C2) == (1, False)
    # Each event's source is recorded as the daemon would: where it was read.
    rows = await db.rows(
        "SELECT source_topic, source_partition, source_offset FROM processed_events "
        "ORDER BY source_offset"
    )
    assert rows == [("events", 0, 10), ("events", 0, 12), ("events", 1, 17)]


async def test_a_dry_run_writes_nothing_and_lists_the_changes(db: Db) -> None:
    report = await replay(mixed(), settings=db.settings, mode=Mode.DRY_RUN, engine=db.engine)
    assert report.dry_run
    assert report.count("applied") == 2 and report.count("duplicate") == 1
    assert await db.count("consumers") == 0 and await db.count("processed_events") == 0
    assert {u: (c.before, c.after, c.changed) for u, c in report.changes.items()} == {
        C1: (None, 1, True),
        C2: (None, 1, True),
    }
    consumers = report.to_json()["consumers"]
    assert consumers[C1] == {
        "generation_before": None,
        "generation_after": 1,
        "deleted_before": False,
        "deleted_after": False,
    }


async def test_an_apply_run_lists_no_changes(db: Db) -> None:
    report = await replay(mixed(), settings=db.settings, mode=Mode.APPLY, engine=db.engine)
    assert report.changes == {}
    assert "consumers" not in report.to_json()


def dead_letters() -> ListSource:
    doc = upsert_doc(C1)
    error_headers = (
        ("error.reason", b"schema_violation"),
        ("error.message", b"was too large then"),
        ("origin.topic", b"events"),
        ("origin.truncated", b"value"),
        ("traceparent-like", b"kept"),
        ("content-type", b"application/json"),
    )
    return ListSource(
        [
            [
                record(0, doc, topic="events.dlq", headers=error_headers),
                record(1, value=b"{", key=C1.encode(), topic="events.dlq"),
            ],
            [record(2, upsert_doc(C2), topic="events.dlq")],
        ],
        name="topic events.dlq",
    )


def republish_settings(**extra: Any) -> Settings:
    return load_settings(
        bootstrap_servers="kafka:9092", topic="events", request_timeout_seconds=5, **extra
    )


async def test_republish_puts_valid_dead_letters_back_without_the_error_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster({"events": 3})
    monkeypatch.setattr(runner, "AIOKafkaProducer", producer_class(cluster))
    source = dead_letters()
    report = await replay(source, settings=republish_settings(), mode=Mode.REPUBLISH)
    written = cluster.written("events")
    assert sorted((w.key, w.value) for w in written) == sorted(
        (r.key, r.value) for r in (source.chunks[0][0], source.chunks[1][0])
    )
    [first] = [w for w in written if w.key == C1.encode()]
    assert first.headers == [("traceparent-like", b"kept"), ("content-type", b"application/json")]
    assert (report.republished, report.read, dict(report.invalid)) == (2, 3, {"not_json": 1})
    assert report.outcomes == Counter()
    [producer] = cluster.producers
    assert producer.started and producer.stopped
    assert producer.options["acks"] == "all" and producer.options["enable_idempotence"]
    assert report.to_json()["republished"] == 2


async def test_a_republish_dry_run_counts_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster({"events": 3})
    monkeypatch.setattr(runner, "AIOKafkaProducer", producer_class(cluster))
    report = await replay(
        dead_letters(), settings=republish_settings(), mode=Mode.REPUBLISH_DRY_RUN
    )
    assert cluster.producers == []
    assert (report.republished, report.read, report.dry_run) == (2, 3, True)
    assert report.to_json()["republished"] == 2 and report.to_json()["dry_run"] is True


async def test_a_dead_letter_the_broker_refuses_fails_the_republish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every send is awaited to its acknowledgement: a refusal is not counted as done."""
    refused = MessageSizeTooLargeError("too large for the events topic")
    cluster = FakeCluster({"events": 3}, refuse=lambda w: refused if w.key == C2.encode() else None)
    monkeypatch.setattr(runner, "AIOKafkaProducer", producer_class(cluster))
    with pytest.raises(MessageSizeTooLargeError):
        await replay(dead_letters(), settings=republish_settings(), mode=Mode.REPUBLISH)
    assert [w.key for w in cluster.written("events")] == [C1.encode()]
    assert cluster.producers[0].stopped


async def test_progress_is_told_the_total_each_chunk_and_the_end(db: Db) -> None:
    progress = RecordingProgress()
    await replay(
        mixed(), settings=db.settings, mode=Mode.DRY_RUN, engine=db.engine, progress=progress
    )
    assert progress.calls == [
        ("start", 8, "hand-made records"),
        ("advance", 4),
        ("advance", 4),
        ("stop",),
    ]


async def test_a_source_that_breaks_still_stops_the_progress_and_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster({"events": 1})
    monkeypatch.setattr(runner, "AIOKafkaProducer", producer_class(cluster))
    source = dead_letters()
    source.fail_after = ConnectionResetError("source gone")
    progress = RecordingProgress()
    with pytest.raises(ConnectionResetError):
        await replay(source, settings=republish_settings(), mode=Mode.REPUBLISH, progress=progress)
    assert progress.calls[-1] == ("stop",)
    assert cluster.producers[0].stopped


async def test_progress_is_logged_as_often_as_asked(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await replay(
        mixed(), settings=db.settings, mode=Mode.DRY_RUN, engine=db.engine, progress_log_seconds=0
    )
    lines = [e for e in logged(caplog) if e["event"] == "replay_progress"]
    assert [(e["read"], e["total"]) for e in lines] == [(4, 8), (8, 8)]
    assert all(e["events_per_second"] > 0 for e in lines)
    assert lines[0]["eta_seconds"] is not None and lines[0]["eta_seconds"] >= 0
    assert lines[1]["eta_seconds"] == 0
    [started] = [e for e in logged(caplog) if e["event"] == "replay_started"]
    assert (started["mode"], started["records"]) == ("dry_run", 8)
    [finished] = [e for e in logged(caplog) if e["event"] == "replay_finished"]
    assert {k: finished[k] for k in ("read", "applied", "duplicate", "rejected", "failed")} == {
        "read": 8,
        "applied": 2,
        "duplicate": 1,
        "rejected": 1,
        "failed": 0,
    }
    assert (finished["invalid"], finished["mode"]) == (4, "dry_run")


async def test_progress_is_not_logged_before_its_interval(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await replay(mixed(), settings=db.settings, mode=Mode.DRY_RUN, engine=db.engine)
    assert [e for e in logged(caplog) if e["event"] == "replay_progress"] == []


async def test_an_undecodable_record_is_logged_with_its_coordinates(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await replay(mixed(), settings=db.settings, mode=Mode.DRY_RUN, engine=db.engine)
    [entry] = [e for e in logged(caplog) if e["event"] == "replay_record_undecodable"]
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("events", 0, 15)
    assert entry["error"] == "header #1 name is not UTF-8"
    assert entry["level"] == "warning"


def test_the_report_as_json() -> None:
    report = ReplayReport(source="archive a.jsonl", mode=Mode.APPLY, read=10, seconds=3.14159)
    report.outcomes.update(
        {
            ("applied", None): 5,
            ("duplicate", None): 1,
            ("rejected", "generation_conflict"): 2,
            ("rejected", "consumer_not_found"): 1,
            ("failed", "cas_retries_exhausted"): 1,
        }
    )
    report.invalid.update({"too_large": 2, "not_json": 1})
    assert report.to_json() == {
        "source": "archive a.jsonl",
        "mode": "apply",
        "dry_run": False,
        "read": 10,
        "outcomes": {"applied": 5, "duplicate": 1, "rejected": 3, "failed": 1},
        "rejected_by_reason": {"consumer_not_found": 1, "generation_conflict": 2},
        "invalid": 3,
        "invalid_by_reason": {"not_json": 1, "too_large": 2},
        "seconds": 3.142,
        "events_per_second": 3.2,
        "problems": 4,
    }
    assert list(report.to_json()["invalid_by_reason"]) == ["not_json", "too_large"]
    assert (report.failed, report.problems, report.rate) == (1, 4, 10 / 3.14159)
    assert ReplayReport(source="s", mode=Mode.APPLY, read=3).rate == 0.0
    assert ReplayReport(source="s", mode=Mode.DRY_RUN).dry_run
    assert not ReplayReport(source="s", mode=Mode.REPUBLISH).dry_run


class Flaky:
    """An applier whose database is away for the first ``down`` batches."""

    def __init__(self, down: int, error: BaseException | None = None) -> None:
        self.down = down
        self.error = error or TransientDatabaseError("database away")
        self.calls = 0

    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]:
        self.calls += 1
        if self.calls <= self.down:
            raise self.error
        return []


async def test_a_database_outage_is_waited_out_with_backoff() -> None:
    seen: list[RetryDetails] = []
    previous = get_on_retry_hooks()
    set_on_retry_hooks([seen.append])
    try:
        flaky = Flaky(down=2)
        assert await runner._patiently(flaky, []) == []
    finally:
        set_on_retry_hooks(previous)
    assert flaky.calls == 3
    ours = [d for d in seen if isinstance(d.caused_by, TransientDatabaseError)]
    assert [d.retry_num for d in ours] == [1, 2]
    # stamina's exponential backoff from 0.2 s, plus up to its 1 s of jitter.
    assert 0.2 <= ours[0].wait_for <= 1.2
    assert 0.4 <= ours[1].wait_for <= 1.4


async def test_a_database_outage_is_waited_out_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "DATABASE_PATIENCE_SECONDS", 0.3)
    flaky = Flaky(down=1_000)
    began = time.monotonic()
    with pytest.raises(TransientDatabaseError):
        await runner._patiently(flaky, [])
    assert time.monotonic() - began < 5
    assert flaky.calls >= 1


async def test_a_bug_in_the_apply_path_is_not_retried() -> None:
    flaky = Flaky(down=1, error=KeyError("bug"))
    with pytest.raises(KeyError):
        await runner._patiently(flaky, [])
    assert flaky.calls == 1


ORIGINAL_TRACE = "0af7651916cd43dd8448eb211c80319c"
ORIGINAL_SPAN = "b7ad6b7169203331"


async def test_a_traced_republish_is_a_new_send_linked_to_the_carried_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each record a ``send`` span of the replay's own trace, linked to the context the
    dead letter carried, ended at the acknowledgement; the record carries the new one."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from service import tracing
    from service.tracing.sdk import build_tracing

    exporter = InMemorySpanExporter()
    installed = build_tracing([exporter], b"replay-tests-key", sampler=ALWAYS_ON, batch=False)
    assert installed is not None
    previous = tracing.install(installed)
    cluster = FakeCluster({"events": 1})
    monkeypatch.setattr(runner, "AIOKafkaProducer", producer_class(cluster))
    carried = ("traceparent", f"00-{ORIGINAL_TRACE}-{ORIGINAL_SPAN}-01".encode())
    letter = record(0, upsert_doc(C1), topic="events.dlq", headers=(carried, ("x-app", b"kept")))
    try:
        await replay(ListSource([[letter]]), settings=republish_settings(), mode=Mode.REPUBLISH)
    finally:
        tracing.install(previous)
        installed.shutdown()
    [span] = [s for s in exporter.get_finished_spans() if s.name == "send events"]
    assert span.context.trace_id != int(ORIGINAL_TRACE, 16)
    assert [link.context.span_id for link in span.links] == [int(ORIGINAL_SPAN, 16)]
    [written] = cluster.written("events")
    names = [name for name, _ in written.headers]
    assert names.count("traceparent") == 1 and ("x-app", b"kept") in written.headers
    sent = dict(written.headers)["traceparent"].decode()
    assert sent.split("-")[1:3] == [f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"]


async def test_a_republisher_without_a_broker_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster({"events": 1}, up=False)
    monkeypatch.setattr(runner, "AIOKafkaProducer", producer_class(cluster))
    with pytest.raises(BrokerUnavailable) as caught:
        await replay(dead_letters(), settings=republish_settings(), mode=Mode.REPUBLISH)
    assert str(caught.value).startswith("cannot connect the republisher to Kafka at kafka:9092: ")


async def test_the_modes_that_write_or_read_the_database_need_an_engine() -> None:
    settings = republish_settings()
    with pytest.raises(AssertionError, match=r"^apply needs a database engine$"):
        await replay(mixed(), settings=settings, mode=Mode.APPLY)
    with pytest.raises(AssertionError, match=r"^a dry run reads the database$"):
        await replay(mixed(), settings=settings, mode=Mode.DRY_RUN)


async def test_the_report_times_the_run(db: Db) -> None:
    began = time.monotonic()
    report = await replay(mixed(), settings=db.settings, mode=Mode.DRY_RUN, engine=db.engine)
    assert 0 < report.seconds <= time.monotonic() - began
    assert report.rate == report.read / report.seconds


def clocked(monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    """The runner's clock: each reading ``step`` seconds after the one before."""
    readings = iter(range(1_000))
    monkeypatch.setattr(runner, "time", SimpleNamespace(monotonic=lambda: step * next(readings)))


def three_chunks() -> ListSource:
    return ListSource(
        [
            [record(2 * i + j, upsert_doc(consumer_id(2 * i + j))) for j in range(2)]
            for i in range(3)
        ]
    )


async def test_progress_is_logged_every_5_s_by_default_with_rate_and_eta(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Readings 0 (start), 2.5, 5.0, 7.5 (the chunks), 10 (the end): one line, at 5.0."""
    caplog.set_level(logging.INFO)
    clocked(monkeypatch, 2.5)
    report = await replay(
        three_chunks(), settings=republish_settings(), mode=Mode.REPUBLISH_DRY_RUN
    )
    lines = [e for e in logged(caplog) if e["event"] == "replay_progress"]
    assert [(e["read"], e["total"], e["events_per_second"], e["eta_seconds"]) for e in lines] == [
        (4, 6, 0.8, 2.5)
    ]
    assert report.seconds == 10.0


async def test_progress_without_elapsed_time_has_no_rate_and_no_eta(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clocked(monkeypatch, 0)
    await replay(
        three_chunks(),
        settings=republish_settings(),
        mode=Mode.REPUBLISH_DRY_RUN,
        progress_log_seconds=0,
    )
    lines = [e for e in logged(caplog) if e["event"] == "replay_progress"]
    assert [(e["read"], e["events_per_second"], e["eta_seconds"]) for e in lines] == [
        (2, 0.0, None),
        (4, 0.0, None),
        (6, 0.0, None),
    ]


async def test_each_progress_line_s_rate_and_eta_to_a_tenth(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Chunks of 3, 2 and 2 read at 2, 4 and 6 s: the rate and the time left to one
    decimal, and no time left at the end."""
    caplog.set_level(logging.INFO)
    clocked(monkeypatch, 2)
    docs = [upsert_doc(consumer_id(n)) for n in range(7)]
    chunks = [[record(n, docs[n]) for n in part] for part in ([0, 1, 2], [3, 4], [5, 6])]
    await replay(
        ListSource(chunks),
        settings=republish_settings(),
        mode=Mode.REPUBLISH_DRY_RUN,
        progress_log_seconds=0,
    )
    lines = [e for e in logged(caplog) if e["event"] == "replay_progress"]
    assert [(e["read"], e["total"], e["events_per_second"], e["eta_seconds"]) for e in lines] == [
        (3, 7, 1.5, 2.7),
        (5, 7, 1.2, 1.6),
        (7, 7, 1.2, 0.0),
    ]


async def test_every_invalid_record_and_every_duplicate_of_a_refusal_is_counted(db: Db) -> None:
    refused = upsert_doc(C2, expected_generation=3)  # C2 does not exist: rejected
    source = ListSource(
        [
            [
                record(0, value=None, key=None, undecodable="header #1 name is not UTF-8"),
                record(1, value=None, key=None, undecodable="header #2 name is not UTF-8"),
                record(2, value=b"{", key=C1.encode()),
                record(3, value=b"[", key=C1.encode()),
                record(4, refused),
            ],
            [record(5, refused)],  # the same refused event again: a duplicate
        ]
    )
    report = await replay(source, settings=db.settings, mode=Mode.APPLY, engine=db.engine)
    assert report.invalid == Counter({"undecodable": 2, "not_json": 2})
    assert report.outcomes == Counter(
        {("rejected", "consumer_not_found"): 1, ("duplicate", None): 1}
    )
