"""``decide_failed``: what an event whose compare-and-swap retries ran out reports.

FAILED carries the consumer as it is (its generation and its state for the outcome
record), or no generation and no state when there is no row; an event that settled
elsewhere meanwhile reports that instead (a duplicate, or a reused id), with the
consumer as it is too."""

from __future__ import annotations

from dataclasses import replace

from service.domain.consumer import ConsumerState
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind, Reason
from service.domain.rules import decide_failed
from tests.apply.helpers import new_id, upsert

C = "abcdef11-2222-4333-8444-555555555555"
CURRENT = ConsumerState(C, 6, False, "proj", "user", None, new_id())


def inbox_row(outcome: OutcomeKind, payload_hash: str, **fields: object) -> ProcessedEvent:
    row = ProcessedEvent(new_id(), C, payload_hash, outcome, None, 3)
    return replace(row, **fields)  # type: ignore[arg-type]


def test_failed_reports_the_consumer_as_it_is() -> None:
    digest = upsert(C).payload_hash()
    d = decide_failed(digest, CURRENT, None)
    assert (d.kind, d.reason, d.generation_after, d.state_after, d.write, d.inbox) == (
        OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED, 6, CURRENT, None, InboxWrite.INSERT,
    )  # fmt: skip


def test_failed_for_a_consumer_with_no_row_has_no_generation_and_no_state() -> None:
    d = decide_failed(upsert(C).payload_hash(), None, None)
    assert (d.kind, d.generation_after, d.state_after) == (OutcomeKind.FAILED, None, None)


def test_failed_again_replaces_the_earlier_failed_row() -> None:
    digest = upsert(C).payload_hash()
    d = decide_failed(digest, CURRENT, inbox_row(OutcomeKind.FAILED, digest))
    assert (d.kind, d.inbox, d.state_after) == (
        OutcomeKind.FAILED, InboxWrite.REPLACE_FAILED, CURRENT,
    )  # fmt: skip


def test_settled_elsewhere_is_a_duplicate_with_the_consumer_as_it_is() -> None:
    digest = upsert(C).payload_hash()
    applied = inbox_row(OutcomeKind.APPLIED, digest, generation_after=5)
    d = decide_failed(digest, CURRENT, applied)
    assert (d.kind, d.original, d.generation_after, d.state_after, d.inbox) == (
        OutcomeKind.DUPLICATE, OutcomeKind.APPLIED, 5, CURRENT, InboxWrite.NONE,
    )  # fmt: skip


def test_an_id_reused_meanwhile_is_rejected_with_the_consumer_as_it_is() -> None:
    reused = inbox_row(OutcomeKind.APPLIED, "another payload")
    d = decide_failed(upsert(C).payload_hash(), CURRENT, reused)
    assert (d.kind, d.reason, d.generation_after, d.state_after) == (
        OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, 6, CURRENT,
    )  # fmt: skip
    # A FAILED row of another payload is a reused id as well, not ours to replace.
    failed_other = inbox_row(OutcomeKind.FAILED, "another payload")
    d = decide_failed(upsert(C).payload_hash(), None, failed_other)
    assert (d.kind, d.reason, d.generation_after, d.state_after) == (
        OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, None, None,
    )  # fmt: skip
