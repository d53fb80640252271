"""What a producer reads back (``service.producer.replies.EventOutcome``), without a
broker: an outcome record as the daemon writes it (``contract.records.outcome_record``)
read into every field, and what ``ok`` and ``summary`` say for each kind."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from service.contract.records import outcome_record
from service.domain.consumer import ConsumerState
from service.domain.outcomes import EventSource, OutcomeKind, Reason
from service.producer.replies import EventOutcome, outcome_from_record

CONSUMER = "00000000-0000-4000-8000-0000000000bb"
EVENT = "00000000-0000-4000-8000-0000000000ee"
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_an_outcome_record_is_read_into_every_field() -> None:
    state = ConsumerState(CONSUMER, 5, False, "proj", "user", "VM", EVENT)
    value = outcome_record(
        event_id=EVENT,
        consumer_uuid=CONSUMER,
        outcome=OutcomeKind.APPLIED,
        reason=None,
        generation_after=5,
        source_topic="consumer-events",
        source_partition=2,
        source_offset=41,
        processed_at=WHEN,
        state_after=state,
    )
    outcome = outcome_from_record(value)
    assert (outcome.event_id, outcome.consumer_uuid) == (EVENT, CONSUMER)
    assert (outcome.kind, outcome.reason, outcome.original) == (OutcomeKind.APPLIED, None, None)
    assert outcome.generation_after == 5 and outcome.message is None
    assert outcome.source == EventSource("consumer-events", 2, 41)
    assert outcome.state_after is not None
    after = outcome.state_after
    assert (after.uuid, after.generation, after.deleted) == (CONSUMER, 5, False)
    assert (after.project_id, after.user_id, after.consumer_type) == ("proj", "user", "VM")


def test_a_rejection_and_an_invalid_event_are_read_with_their_reason_and_message() -> None:
    duplicate = outcome_from_record(
        outcome_record(
            event_id=EVENT,
            consumer_uuid=CONSUMER,
            outcome=OutcomeKind.DUPLICATE,
            reason=Reason.GENERATION_CONFLICT,
            original_outcome=OutcomeKind.REJECTED,
            generation_after=None,
            source_topic="t",
            source_partition=0,
            source_offset=1,
            processed_at=WHEN,
        )
    )
    assert (duplicate.kind, duplicate.original, duplicate.reason) == (
        OutcomeKind.DUPLICATE,
        OutcomeKind.REJECTED,
        Reason.GENERATION_CONFLICT,
    )
    assert duplicate.state_after is None
    invalid = outcome_from_record(
        outcome_record(
            event_id=None,
            consumer_uuid=None,
            outcome=OutcomeKind.INVALID,
            reason=Reason.NOT_JSON,
            generation_after=None,
            source_topic="t",
            source_partition=0,
            source_offset=2,
            processed_at=WHEN,
            message="not JSON at byte 0",
        )
    )
    assert (invalid.kind, invalid.reason, invalid.message) == (
        OutcomeKind.INVALID,
        Reason.NOT_JSON,
        "not JSON at byte 0",
    )
    assert invalid.event_id is None and invalid.consumer_uuid is None


def _outcome(
    kind: OutcomeKind, reason: Reason | None, original: OutcomeKind | None
) -> EventOutcome:
    return EventOutcome(
        event_id=str(uuid.uuid4()),
        consumer_uuid=CONSUMER,
        kind=kind,
        reason=reason,
        generation_after=None,
        original=original,
        state_after=None,
        message=None,
        source=EventSource("t", 0, 0),
    )


@pytest.mark.parametrize(
    ("kind", "reason", "original", "ok", "summary"),
    [
        (OutcomeKind.APPLIED, None, None, True, "applied"),
        (OutcomeKind.DUPLICATE, None, OutcomeKind.APPLIED, True, "duplicate of applied"),
        (
            OutcomeKind.DUPLICATE,
            Reason.CONSUMER_NOT_FOUND,
            OutcomeKind.REJECTED,
            False,
            "duplicate of rejected: consumer_not_found",
        ),
        (OutcomeKind.REJECTED, Reason.CONSUMER_EXISTS, None, False, "rejected: consumer_exists"),
        (OutcomeKind.INVALID, Reason.TOO_LARGE, None, False, "invalid: too_large"),
        (
            OutcomeKind.FAILED,
            Reason.CAS_RETRIES_EXHAUSTED,
            None,
            False,
            "failed: cas_retries_exhausted",
        ),
    ],
)
def test_ok_only_for_applied_and_summary_says_what_happened(
    kind: OutcomeKind,
    reason: Reason | None,
    original: OutcomeKind | None,
    ok: bool,
    summary: str,
) -> None:
    outcome = _outcome(kind, reason, original)
    assert outcome.ok is ok
    assert outcome.summary == summary
