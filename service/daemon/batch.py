"""What one batch of records becomes besides the database writes: its admitted events,
its dead letters and its outcome records (pure functions, no I/O).

Every record either passes the record boundary (``service.apply.admission``) and is
applied, or is a dead letter with an ``invalid`` outcome record; an applied event that
lost every compare-and-swap (``failed``) is dead-lettered too.  The formats are the
contract's (``service.contract.records``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from service.apply.admission import admit
from service.contract.decode import InvalidEvent
from service.contract.records import (
    dead_letter_headers,
    invalid_event_headers,
    outcome_key,
    outcome_record,
)
from service.contract.replies import ReplyPolicy
from service.domain.events import ConsumerEvent
from service.domain.outcomes import EventSource, Outcome, OutcomeKind
from service.kafka.records import UndecodableRecord, undecodable_event
from service.sinks.base import DeadLetter, OutcomeMessage

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord


def source_of(record: ConsumerRecord) -> EventSource:
    return EventSource(record.topic, record.partition, record.offset)


@dataclass
class Admitted:
    """A batch sorted at the record boundary, in offset order within each list."""

    #: The valid events, with where each was read, for the applier.
    valid: list[tuple[ConsumerEvent, EventSource]] = field(default_factory=list)
    #: The record of each valid event (same order as ``valid``).
    records: list[ConsumerRecord] = field(default_factory=list)
    #: The dead letters of the invalid records.
    dead: list[DeadLetter] = field(default_factory=list)
    #: Each invalid record with its error, for its outcome record.
    invalid: list[tuple[ConsumerRecord, InvalidEvent]] = field(default_factory=list)


def admit_batch(batch: Sequence[ConsumerRecord], max_event_bytes: int) -> Admitted:
    """Decode every record; an invalid one becomes a dead letter (never raises)."""
    admitted = Admitted()
    for record in batch:
        try:
            if isinstance(record, UndecodableRecord):
                raise undecodable_event(record)
            event = admit(record.key, record.value, max_event_bytes)
        except InvalidEvent as exc:
            headers = invalid_event_headers(
                exc,
                original_headers=list(record.headers or ()),
                origin_topic=record.topic,
                origin_partition=record.partition,
                origin_offset=record.offset,
            )
            admitted.dead.append(_letter(record, exc.reason.value, True, headers))
            admitted.invalid.append((record, exc))
            continue
        admitted.valid.append((event, source_of(record)))
        admitted.records.append(record)
    return admitted


def failed_letters(
    settled: Sequence[tuple[ConsumerRecord, Outcome]], now: datetime
) -> list[DeadLetter]:
    """The dead letters of the events that lost every compare-and-swap."""
    letters = []
    for record, outcome in settled:
        if outcome.kind is not OutcomeKind.FAILED:
            continue
        headers = dead_letter_headers(
            list(record.headers or ()),
            error_class="failed",
            reason="cas_retries_exhausted",
            message=f"compare-and-swap lost {outcome.attempts} times to other writers",
            origin_topic=record.topic,
            origin_partition=record.partition,
            origin_offset=record.offset,
            attempts=outcome.attempts,
            first_failed_at=now,
            failed_at=now,
        )
        letters.append(_letter(record, "cas_retries_exhausted", False, headers))
    return letters


def outcome_messages(
    settled: Sequence[tuple[ConsumerRecord, Outcome]],
    invalid: Sequence[tuple[ConsumerRecord, InvalidEvent]],
    now: datetime,
    replies: ReplyPolicy | None = None,
) -> list[OutcomeMessage]:
    """One outcome record per event, keyed by event id (no key when it was unreadable),
    with the reply route its record asked for on a topic ``replies`` allows (invalid
    records too, when their headers could be read).  Without an outcomes topic
    (``replies.every_outcome`` false) only the events that get a reply have one.  In
    offset order: a partition's outcome records leave in the order of its events,
    invalid ones included."""
    messages: list[tuple[int, OutcomeMessage]] = []
    every = replies is None or replies.every_outcome
    for record, outcome in settled:
        route = None if replies is None else replies.route(record.headers)
        if route is None and not every:
            continue
        value = outcome_record(
            event_id=outcome.event_id,
            consumer_uuid=outcome.consumer_uuid,
            outcome=outcome.kind,
            reason=outcome.reason,
            generation_after=outcome.generation_after,
            original_outcome=outcome.original,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            processed_at=now,
            state_after=outcome.state_after,
        )
        messages.append(
            (record.offset, OutcomeMessage(outcome_key(outcome.event_id), value, route))
        )
    for record, error in invalid:
        route = None if replies is None else replies.route(record.headers)
        if route is None and not every:
            continue
        value = outcome_record(
            event_id=None,
            consumer_uuid=None,
            outcome="invalid",
            reason=error.reason,
            generation_after=None,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            processed_at=now,
            message=error.message,
        )
        messages.append((record.offset, OutcomeMessage(None, value, route)))
    messages.sort(key=lambda pair: pair[0])
    return [message for _, message in messages]


#: A dead letter's value is read for its ``event_id`` only up to this size.
_READ_EVENT_ID_MAX_BYTES: Final = 64 * 1024


def dead_letter_fields(letter: DeadLetter) -> dict[str, Any]:
    """The fields of a dead letter's WARNING line: the reason, where it was read, and
    the consumer (its key) and event ids when they are UUIDs, which the log redactor
    turns into pseudonyms; anything else of the record stays out of the logs."""
    headers = dict(letter.headers)
    origin = letter.origin
    fields: dict[str, Any] = {
        "reason": letter.reason,
        "error_class": "invalid" if letter.invalid else "failed",
        "origin": f"{origin.topic}/{origin.partition}@{origin.offset}",
        "consumer": _uuid_or_none(letter.key),
        "event_id": _event_id(letter.value),
    }
    path = headers.get("error.path")
    if path is not None:
        fields["path"] = path.decode("utf-8", "replace")
    return fields


def _uuid_or_none(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        return str(uuid.UUID(text.strip()))
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None


def _event_id(value: bytes | None) -> str | None:
    if value is None or len(value) > _READ_EVENT_ID_MAX_BYTES:
        return None
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return _uuid_or_none(document.get("event_id")) if isinstance(document, dict) else None


def _letter(
    record: ConsumerRecord, reason: str, invalid: bool, headers: list[tuple[str, bytes]]
) -> DeadLetter:
    return DeadLetter(
        key=record.key,
        value=record.value,
        headers=headers,
        origin=source_of(record),
        reason=reason,
        invalid=invalid,
    )
