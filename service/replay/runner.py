"""Drive records from a source through the daemon's apply path, and count what happened.

Each chunk of records is decoded with the daemon's gate (``decode_event`` then the
apply rules' ``validate``, under the current ``max_event_bytes``), and the valid events
go, in order, to ``Applier.apply_batch``: the same idempotent, compare-and-swap path
the daemon uses, so a replay running next to the daemon is safe (an event both of
them process is applied once; the other sees a duplicate).  Nothing is dead-lettered
or committed by a replay: invalid records and failed events are counted and reported,
and the exit status says so.

Modes: ``apply`` (write), ``dry_run`` (``service.apply.dryrun``: same rules, nothing
written) and ``republish`` (dead letters back onto the events topic, key and value
unchanged, the error headers dropped, for the daemon to process again).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import stamina
import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from service.apply.admission import admit
from service.apply.applier import Applier
from service.apply.dryrun import DryRun, GenerationChange
from service.config import Settings
from service.contract.decode import InvalidEvent
from service.contract.records import OWN_HEADERS
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind, Reason
from service.kafka.clients import producer_options, start_bounded
from service.replay.records import SourceRecord
from service.replay.sources import Source
from service.store.errors import TransientDatabaseError
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.tracing import active as tracing_active

log = structlog.stdlib.get_logger(__name__)

#: How long a replay waits out a database outage before giving up (a CLI run must end).
DATABASE_PATIENCE_SECONDS = 120.0


class Mode(StrEnum):
    APPLY = "apply"
    DRY_RUN = "dry_run"
    REPUBLISH = "republish"
    REPUBLISH_DRY_RUN = "republish_dry_run"


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...

    def advance(self, count: int) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class ReplayReport:
    """What a run read and what became of it."""

    source: str
    mode: Mode
    read: int = 0
    outcomes: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    republished: int = 0
    seconds: float = 0.0
    changes: dict[str, GenerationChange] = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        return self.mode in (Mode.DRY_RUN, Mode.REPUBLISH_DRY_RUN)

    @property
    def failed(self) -> int:
        return sum(n for (kind, _), n in self.outcomes.items() if kind == OutcomeKind.FAILED)

    @property
    def problems(self) -> int:
        """Failed events plus invalid records: non-zero means exit status 1."""
        return self.failed + sum(self.invalid.values())

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def count(self, kind: str) -> int:
        return sum(n for (k, _), n in self.outcomes.items() if k == kind)

    def record(self, outcome: Outcome) -> None:
        reason = None if outcome.kind is OutcomeKind.DUPLICATE else outcome.reason
        self.outcomes[(outcome.kind.value, None if reason is None else reason.value)] += 1

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "source": self.source,
            "mode": self.mode.value,
            "dry_run": self.dry_run,
            "read": self.read,
            "outcomes": {
                kind: self.count(kind) for kind in ("applied", "duplicate", "rejected", "failed")
            },
            "rejected_by_reason": {
                reason: n
                for (kind, reason), n in sorted(self.outcomes.items(), key=str)
                if kind == "rejected" and reason
            },
            "invalid": sum(self.invalid.values()),
            "invalid_by_reason": dict(sorted(self.invalid.items())),
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            "problems": self.problems,
        }
        if self.mode in (Mode.REPUBLISH, Mode.REPUBLISH_DRY_RUN):
            doc["republished"] = self.republished
        if self.mode is Mode.DRY_RUN:
            doc["consumers"] = {
                uuid: {
                    "generation_before": c.before,
                    "generation_after": c.after,
                    "deleted_before": c.deleted_before,
                    "deleted_after": c.deleted_after,
                }
                for uuid, c in sorted(self.changes.items())
            }
        return doc


class _Apply(Protocol):
    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]: ...


async def _patiently(
    applier: _Apply, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
) -> list[Outcome]:
    """A database outage is waited out (bounded); the batch is re-sent whole, and what
    an earlier attempt committed comes back as duplicates."""
    async for attempt in stamina.retry_context(
        on=TransientDatabaseError,
        attempts=None,
        timeout=DATABASE_PATIENCE_SECONDS,
        wait_initial=0.2,
        wait_max=5.0,
    ):
        with attempt:
            return await applier.apply_batch(items)
    raise AssertionError("unreachable")  # pragma: no cover


async def replay(
    source: Source,
    *,
    settings: Settings,
    mode: Mode,
    engine: AsyncEngine | None = None,
    progress: Progress | None = None,
    progress_log_seconds: float = 5.0,
) -> ReplayReport:
    """Run ``source`` to its end in ``mode``; returns the report (never raises for an
    event's outcome, only for infrastructure that stays down)."""
    progress = progress or NoProgress()
    report = ReplayReport(source=source.describe(), mode=mode)
    applier: _Apply | None = None
    dry: DryRun | None = None
    producer: AIOKafkaProducer | None = None
    if mode is Mode.APPLY:
        assert engine is not None, "apply needs a database engine"
        applier = Applier(SqlUnitOfWorkFactory(engine), settings)
    elif mode is Mode.DRY_RUN:
        assert engine is not None, "a dry run reads the database"
        applier = dry = DryRun(SqlUnitOfWorkFactory(engine), settings)
    elif mode is Mode.REPUBLISH:
        producer = AIOKafkaProducer(**producer_options(settings))
        await start_bounded(producer, settings, "republisher")
    started = time.monotonic()
    last_log = started
    progress.start(source.total, report.source)
    log.info("replay_started", mode=mode.value, records=source.total)
    try:
        async for chunk in source.batches():
            valid = _decode_chunk(chunk, settings.max_event_bytes, report)
            report.read += len(chunk)
            if applier is not None and valid:
                items = [(event, EventSource(r.topic, r.partition, r.offset)) for r, event in valid]
                for outcome in await _patiently(applier, items):
                    report.record(outcome)
            elif mode in (Mode.REPUBLISH, Mode.REPUBLISH_DRY_RUN):
                if producer is not None:
                    await _republish(producer, settings.topic, [r for r, _ in valid])
                report.republished += len(valid)
            progress.advance(len(chunk))
            now = time.monotonic()
            if now - last_log >= progress_log_seconds:
                last_log = now
                _log_progress(report, source.total, now - started)
    finally:
        progress.stop()
        report.seconds = time.monotonic() - started
        if producer is not None:
            await producer.stop()
    if dry is not None:
        report.changes = dry.changes()
    log.info(
        "replay_finished",
        mode=mode.value,
        read=report.read,
        applied=report.count("applied"),
        duplicate=report.count("duplicate"),
        rejected=report.count("rejected"),
        failed=report.failed,
        invalid=sum(report.invalid.values()),
        seconds=round(report.seconds, 3),
    )
    return report


def _decode_chunk(
    chunk: list[SourceRecord], max_bytes: int, report: ReplayReport
) -> list[tuple[SourceRecord, ConsumerEvent]]:
    valid = []
    for record in chunk:
        if record.undecodable is not None:
            # Counted invalid like the daemon dead-letters it; the replay goes on.
            report.invalid[Reason.UNDECODABLE.value] += 1
            log.warning(
                "replay_record_undecodable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=record.undecodable,
            )
            continue
        try:
            valid.append((record, admit(record.key, record.value, max_bytes)))
        except InvalidEvent as exc:
            report.invalid[exc.reason.value] += 1
    return valid


async def _republish(producer: AIOKafkaProducer, topic: str, records: list[SourceRecord]) -> None:
    """Same key and value; the dead-letter error headers dropped, others kept.

    Traced, each record is sent in a ``send`` span of the replay's own trace, linked
    to the context the record carried (the original event's, or the daemon's span that
    dead-lettered it): the replay is a new cause, and the original stays one click away.
    """
    tracing = tracing_active()
    futures = []
    for r in records:
        headers = [(n, v) for n, v in r.headers if n not in OWN_HEADERS]
        span = None
        if tracing is not None:
            from service.tracing.spans import SendSpan

            span = SendSpan.republishing(tracing, topic, r.headers)
            headers = span.headers(headers)
        delivery = await producer.send(topic, key=r.key, value=r.value, headers=headers)
        if span is not None:
            span.settle_on(delivery)
        futures.append(delivery)
    await asyncio.gather(*futures)


def _log_progress(report: ReplayReport, total: int, elapsed: float) -> None:
    rate = report.read / elapsed if elapsed > 0 else 0.0
    remaining = max(0, total - report.read)
    log.info(
        "replay_progress",
        read=report.read,
        total=total,
        events_per_second=round(rate, 1),
        eta_seconds=round(remaining / rate, 1) if rate > 0 else None,
    )
