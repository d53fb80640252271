"""The pure decision rules, without a database: every branch, one assertion each."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.domain.consumer import MAX_GENERATION, ConsumerState, Owners
from service.domain.events import UNCONDITIONAL
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind, Reason
from service.domain.rules import InvalidEventError, WriteKind, decide, decide_failed, plan, validate
from tests.apply.helpers import delete, event, new_id, upsert

PLACEHOLDERS = Owners("incomplete-project", "incomplete-user")
C = "abcdef11-2222-4333-8444-555555555555"


def live(generation: int = 3, **changes: object) -> ConsumerState:
    state = ConsumerState(C, generation, False, "proj", "user", "TYPE_A", new_id())
    return replace(state, **changes)  # type: ignore[arg-type]


def tomb(generation: int = 4) -> ConsumerState:
    return live(generation, deleted=True)


def outcome(ev, current, inbox=None):
    return decide(ev, ev.payload_hash(), current, inbox, PLACEHOLDERS)


# --- upsert -------------------------------------------------------------------------


def test_create_with_null_from_nothing_starts_at_one_with_placeholders() -> None:
    d = outcome(upsert(C, None), None)
    assert (d.kind, d.generation_after, d.inbox) == (OutcomeKind.APPLIED, 1, InboxWrite.INSERT)
    assert d.write is not None and d.write.kind is WriteKind.INSERT and d.write.before is None
    assert (d.write.after.project_id, d.write.after.user_id) == (
        "incomplete-project",
        "incomplete-user",
    )
    assert d.write.after.consumer_type is None


def test_create_with_null_over_a_tombstone_continues_its_generation() -> None:
    before = tomb(4)
    d = outcome(upsert(C, None, project_id="p2"), before)
    assert d.kind is OutcomeKind.APPLIED and d.generation_after == 5
    assert d.write is not None and d.write.kind is WriteKind.UPDATE and d.write.before == before
    assert not d.write.after.deleted
    assert d.write.after.project_id == "p2"
    assert d.write.after.user_id == "incomplete-user"  # a new life: absent owner -> placeholder


def test_create_with_null_over_a_live_consumer_is_consumer_exists() -> None:
    d = outcome(upsert(C, None), live(3))
    assert (d.kind, d.reason, d.generation_after, d.write) == (
        OutcomeKind.REJECTED,
        Reason.CONSUMER_EXISTS,
        3,
        None,
    )
    assert d.inbox is InboxWrite.INSERT  # rejections are recorded


def test_expected_n_matching_increments() -> None:
    d = outcome(upsert(C, 3, user_id="u9"), live(3))
    assert d.kind is OutcomeKind.APPLIED and d.generation_after == 4
    assert d.write is not None and d.write.after.user_id == "u9"
    assert d.write.after.project_id == "proj"  # absent owner keeps the current one
    assert d.write.after.consumer_type == "TYPE_A"


@pytest.mark.parametrize("expected", [0, 2, 4])
def test_expected_n_not_matching_is_generation_conflict(expected: int) -> None:
    d = outcome(upsert(C, expected), live(3))
    assert (d.kind, d.reason, d.generation_after) == (
        OutcomeKind.REJECTED,
        Reason.GENERATION_CONFLICT,
        3,
    )


@pytest.mark.parametrize("current", [None, tomb(4)], ids=["absent", "tombstone"])
def test_expected_n_without_a_live_consumer_is_consumer_not_found(current) -> None:
    d = outcome(upsert(C, 4), current)
    assert (d.kind, d.reason) == (OutcomeKind.REJECTED, Reason.CONSUMER_NOT_FOUND)
    assert d.generation_after == (None if current is None else 4)


def test_unconditional_upsert_creates_updates_and_recreates() -> None:
    assert outcome(upsert(C), None).generation_after == 1
    assert outcome(upsert(C), live(7)).generation_after == 8
    d = outcome(upsert(C), tomb(9))
    assert d.kind is OutcomeKind.APPLIED and d.generation_after == 10
    assert d.write is not None and not d.write.after.deleted


def test_upsert_with_real_owners_completes_an_incomplete_consumer() -> None:
    incomplete = live(1, project_id="incomplete-project", user_id="incomplete-user")
    d = outcome(upsert(C, project_id="p", user_id="u", consumer_type="INSTANCE"), incomplete)
    assert d.write is not None
    assert (d.write.after.project_id, d.write.after.user_id, d.write.after.consumer_type) == (
        "p",
        "u",
        "INSTANCE",
    )


def test_every_accepted_upsert_counts_even_without_changes() -> None:
    d = outcome(upsert(C, project_id="proj", user_id="user"), live(5))
    assert d.generation_after == 6


# --- delete -------------------------------------------------------------------------


def test_delete_leaves_a_tombstone_one_generation_later() -> None:
    d = outcome(delete(C), live(3))
    assert d.kind is OutcomeKind.APPLIED and d.generation_after == 4
    assert d.write is not None and d.write.after.deleted and d.write.after.project_id == "proj"


def test_delete_with_matching_n() -> None:
    assert outcome(delete(C, 3), live(3)).generation_after == 4


def test_delete_with_stale_n_is_generation_conflict() -> None:
    assert outcome(delete(C, 2), live(3)).reason is Reason.GENERATION_CONFLICT


@pytest.mark.parametrize("expected", [UNCONDITIONAL, 4, None], ids=["absent", "n", "null"])
@pytest.mark.parametrize("current", [None, tomb(4)], ids=["missing", "tombstone"])
def test_delete_without_a_live_consumer_is_consumer_not_found(current, expected) -> None:
    d = outcome(delete(C, expected), current)
    assert (d.kind, d.reason, d.write) == (OutcomeKind.REJECTED, Reason.CONSUMER_NOT_FOUND, None)


def test_delete_with_null_of_a_live_consumer_is_consumer_exists() -> None:
    assert outcome(delete(C, None), live(2)).reason is Reason.CONSUMER_EXISTS


# --- the inbox ------------------------------------------------------------------------


def entry(ev, outcome_kind, reason=None, generation=2, payload_hash=None) -> ProcessedEvent:
    return ProcessedEvent(
        ev.event_id, ev.consumer_uuid, payload_hash or ev.payload_hash(), outcome_kind, reason,
        generation,
    )  # fmt: skip


def test_same_id_same_payload_is_a_duplicate_of_the_original() -> None:
    ev = upsert(C)
    d = outcome(ev, live(9), entry(ev, OutcomeKind.APPLIED, generation=2))
    assert (d.kind, d.original, d.generation_after, d.write, d.inbox) == (
        OutcomeKind.DUPLICATE,
        OutcomeKind.APPLIED,
        2,
        None,
        InboxWrite.NONE,
    )


def test_duplicate_of_a_rejection_re_reports_its_reason() -> None:
    ev = upsert(C, None)
    d = outcome(ev, live(9), entry(ev, OutcomeKind.REJECTED, Reason.CONSUMER_EXISTS, 1))
    assert (d.kind, d.original, d.reason) == (
        OutcomeKind.DUPLICATE,
        OutcomeKind.REJECTED,
        Reason.CONSUMER_EXISTS,
    )


def test_same_id_other_payload_is_event_id_reused_and_not_recorded() -> None:
    ev = upsert(C)
    d = outcome(ev, live(9), entry(ev, OutcomeKind.APPLIED, payload_hash="0" * 64))
    assert (d.kind, d.reason, d.write, d.inbox) == (
        OutcomeKind.REJECTED,
        Reason.EVENT_ID_REUSED,
        None,
        InboxWrite.NONE,
    )


def test_a_failed_row_does_not_count_as_processed() -> None:
    ev = upsert(C)
    d = outcome(ev, live(9), entry(ev, OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED))
    assert d.kind is OutcomeKind.APPLIED and d.inbox is InboxWrite.REPLACE_FAILED


def test_a_failed_row_with_another_payload_is_still_a_reused_id() -> None:
    ev = upsert(C)
    failed = entry(ev, OutcomeKind.FAILED, Reason.CAS_RETRIES_EXHAUSTED, payload_hash="f" * 64)
    assert outcome(ev, live(9), failed).reason is Reason.EVENT_ID_REUSED


def test_decide_failed() -> None:
    ev = upsert(C)
    d = decide_failed(ev.payload_hash(), live(5), None)
    assert (d.kind, d.reason, d.generation_after, d.inbox) == (
        OutcomeKind.FAILED,
        Reason.CAS_RETRIES_EXHAUSTED,
        5,
        InboxWrite.INSERT,
    )
    again = decide_failed(ev.payload_hash(), live(5), entry(ev, OutcomeKind.FAILED))
    assert again.inbox is InboxWrite.REPLACE_FAILED
    settled = decide_failed(ev.payload_hash(), live(5), entry(ev, OutcomeKind.APPLIED))
    assert settled.kind is OutcomeKind.DUPLICATE


# --- plan: a sequence decided in memory -------------------------------------------------


def test_plan_tracks_state_and_inbox_within_the_sequence() -> None:
    create = upsert(C, None)
    events = [create, upsert(C, 1), create, delete(C, 5), delete(C), upsert(C, None)]
    p = plan([(e, e.payload_hash()) for e in events], {}, {}, PLACEHOLDERS)
    kinds = [(d.kind, d.reason, d.generation_after) for d in p.decisions]
    assert kinds == [
        (OutcomeKind.APPLIED, None, 1),
        (OutcomeKind.APPLIED, None, 2),
        (OutcomeKind.DUPLICATE, None, 1),
        (OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, 2),
        (OutcomeKind.APPLIED, None, 3),
        (OutcomeKind.APPLIED, None, 4),
    ]
    assert p.recorded == [0, 1, 3, 4, 5]  # the duplicate writes nothing
    (write,) = p.writes  # one net write per consumer, from the state as read
    assert write.kind is WriteKind.INSERT and write.before is None
    assert write.after.generation == 4 and not write.after.deleted


def test_plan_net_writes_are_sorted_cas_from_the_state_as_read() -> None:
    other = "00000000-0000-4000-8000-000000000001"
    before = live(3)
    events = [upsert(C), upsert(other), upsert(C)]
    p = plan([(e, e.payload_hash()) for e in events], {C: before}, {}, PLACEHOLDERS)
    assert [w.after.uuid for w in p.writes] == sorted([C, other])
    mine = next(w for w in p.writes if w.after.uuid == C)
    assert mine.before == before and mine.after.generation == 5
    assert mine.after.last_event_id == events[2].event_id


def test_plan_of_rejections_only_writes_no_consumer() -> None:
    events = [upsert(C, 7), delete(C)]
    p = plan([(e, e.payload_hash()) for e in events], {}, {}, PLACEHOLDERS)
    assert p.writes == [] and p.recorded == [0, 1]


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"project_id": "a\x00b"}, "NUL"),
        ({"user_id": "x" * 256}, "1 to 255"),
        ({"project_id": ""}, "1 to 255"),
        ({"consumer_type": "lower"}, "A-Z0-9_"),
        ({"consumer_type": "A'; DROP TABLE consumers; --"}, "A-Z0-9_"),
        ({"project_id": "\ud800"}, "Unicode"),
    ],
)
def test_validate_rejects_values_the_database_cannot_hold(fields, message) -> None:
    with pytest.raises(InvalidEventError, match=message):
        validate(upsert(C, **fields))


@pytest.mark.parametrize(
    "bad",
    [C.upper(), C.replace("-", ""), "{" + C + "}", "not-a-uuid", C + " ", C + "\n", "'; --"],
)
def test_validate_rejects_non_canonical_uuids(bad: str) -> None:
    with pytest.raises(InvalidEventError, match="canonical"):
        validate(upsert(bad))
    with pytest.raises(InvalidEventError, match="canonical"):
        validate(event(C, event_id=bad))


@pytest.mark.parametrize("expected", [-1, True, MAX_GENERATION + 1, 2**63, "3"])
def test_validate_rejects_bad_preconditions(expected) -> None:
    with pytest.raises(InvalidEventError, match="expected_generation"):
        validate(upsert(C, expected))


def test_validate_accepts_the_limits() -> None:
    validate(
        upsert(C, MAX_GENERATION, project_id="x" * 255, user_id="'\"; --", consumer_type="A_1")
    )


def test_an_event_type_the_rules_do_not_know_is_refused_not_tombstoned() -> None:
    """``decide`` matches every EventType exhaustively: a type it does not handle raises
    rather than falling into another type's branch (once, a non-upsert was a delete)."""
    unknown = replace(upsert(C), type="consumer.merge")  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        decide(unknown, "hash", live(3), None, PLACEHOLDERS)
