"""Every decision carries the consumer as it leaves it (``state_after``, which the outcome
record and the producer's ``--wait`` show): the new state when applied, the state as it
was when rejected or a duplicate, none when there is no row.  And a delete's write is a
compare-and-swap from the row as read that stamps the delete's event id."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.domain.consumer import ConsumerState, Owners
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import OutcomeKind, Reason
from service.domain.rules import WriteKind, decide
from tests.apply.helpers import delete, new_id, upsert

C = "abcdef11-2222-4333-8444-555555555555"
PLACEHOLDERS = Owners("incomplete-project", "incomplete-user")
LIVE = ConsumerState(C, 3, False, "proj", "user", "TYPE_A", new_id())
TOMB = ConsumerState(C, 4, True, "proj", "user", "TYPE_A", new_id())


def test_a_rejection_reports_the_consumer_as_it_is() -> None:
    for event, current, reason in (
        (upsert(C, 9), LIVE, Reason.GENERATION_CONFLICT),
        (upsert(C, None), LIVE, Reason.CONSUMER_EXISTS),
        (delete(C), TOMB, Reason.CONSUMER_NOT_FOUND),
    ):
        d = decide(event, event.payload_hash(), current, None, PLACEHOLDERS)
        assert (d.kind, d.reason, d.state_after) == (OutcomeKind.REJECTED, reason, current)
    d = decide(upsert(C, 1), "h", None, None, PLACEHOLDERS)
    assert (d.reason, d.generation_after, d.state_after) == (Reason.CONSUMER_NOT_FOUND, None, None)


def test_a_duplicate_and_a_reused_id_report_the_consumer_as_it_is() -> None:
    event = upsert(C)
    digest = event.payload_hash()
    seen = ProcessedEvent(event.event_id, C, digest, OutcomeKind.APPLIED, None, 2)
    duplicate = decide(event, digest, LIVE, seen, PLACEHOLDERS)
    assert (duplicate.kind, duplicate.state_after, duplicate.generation_after) == (
        OutcomeKind.DUPLICATE, LIVE, 2,
    )  # fmt: skip
    reused = decide(event, "another payload", LIVE, seen, PLACEHOLDERS)
    assert (reused.kind, reused.reason, reused.state_after, reused.generation_after) == (
        OutcomeKind.REJECTED, Reason.EVENT_ID_REUSED, LIVE, 3,
    )  # fmt: skip
    assert decide(event, "another payload", None, seen, PLACEHOLDERS).state_after is None


def test_a_delete_is_a_cas_from_the_row_as_read_stamped_with_its_event() -> None:
    event = delete(C, 3)
    d = decide(event, event.payload_hash(), LIVE, None, PLACEHOLDERS)
    assert d.write is not None
    assert (d.write.kind, d.write.before) == (WriteKind.UPDATE, LIVE)
    after = d.write.after
    assert (after.generation, after.deleted, after.last_event_id) == (4, True, event.event_id)
    assert (after.project_id, after.user_id, after.consumer_type) == ("proj", "user", "TYPE_A")
    assert d.state_after == after and d.inbox is InboxWrite.INSERT


def test_a_create_is_live_and_an_update_is_a_cas_from_the_row_as_read() -> None:
    create = upsert(C, None)
    d = decide(create, create.payload_hash(), None, None, PLACEHOLDERS)
    assert d.write is not None and d.write.after.deleted is False
    update = upsert(C, 3, user_id="u2")
    d = decide(update, update.payload_hash(), LIVE, None, PLACEHOLDERS)
    assert d.write is not None
    assert (d.write.kind, d.write.before, d.write.after.user_id) == (WriteKind.UPDATE, LIVE, "u2")


def test_an_event_type_the_rules_do_not_know_is_named_in_the_error() -> None:
    unknown = replace(upsert(C), type="consumer.merge")  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match=r"consumer\.merge"):
        decide(unknown, "h", LIVE, None, PLACEHOLDERS)
