"""The producer's side of the contract, as logic (no broker): how every event is written
(acks=all, an idempotent producer; readers read_committed) and the read-modify-write
loop's bounds (DESIGN.md, *Producers and the outcome loop*).  The loop against a real
daemon is in tests/producer/test_outcome_wait.py and test_lost_update.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from service.config import load_settings
from service.contract.decode import InvalidEvent
from service.domain.consumer import ConsumerState
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType
from service.domain.outcomes import REASONS_BY_OUTCOME, EventSource, OutcomeKind, Reason
from service.kafka.clients import consumer_options, producer_options
from service.producer.replies import EventOutcome
from service.producer.update import Change, RetryPolicy, conditional_event, update


def test_events_are_written_with_acks_all_by_an_idempotent_producer() -> None:
    """ "written with acks=all and an idempotent producer", and "Every reader ... uses
    read_committed": the one place every client of the service gets its options."""
    settings = load_settings()
    options = producer_options(settings)
    assert (options["acks"], options["enable_idempotence"]) == ("all", True)
    assert consumer_options(settings)["isolation_level"] == "read_committed"


class AlwaysOvertaken:
    """A sender whose every event loses to another writer that moved the consumer on
    (``generation_conflict``, the state after carried in the reply)."""

    def __init__(self, consumer: str) -> None:
        self.state = ConsumerState(consumer, 1, False, "p", "u", None, str(uuid.uuid4()))
        self.sent: list[ConsumerEvent] = []

    async def read(self, consumer: str) -> ConsumerState | None:
        return self.state

    async def send_and_wait(
        self, event: ConsumerEvent, *, wait_seconds: float | None = None
    ) -> EventOutcome:
        self.sent.append(event)
        self.state = replace(self.state, generation=self.state.generation + 1)
        return EventOutcome(
            event_id=event.event_id,
            consumer_uuid=event.consumer_uuid,
            kind=OutcomeKind.REJECTED,
            reason=Reason.GENERATION_CONFLICT,
            generation_after=self.state.generation,
            original=None,
            state_after=self.state,
            message=None,
            source=EventSource("events", 0, len(self.sent)),
        )


async def test_the_read_modify_write_loop_is_bounded_in_attempts_and_time() -> None:
    """ "retries its read-modify-write with exponential backoff and jitter, bounded in
    attempts and time", and "A stale precondition is never silently turned into an
    unconditional write": every retry is conditional on the state the rejection
    reported."""
    consumer = str(uuid.uuid4())
    sender = AlwaysOvertaken(consumer)
    by_attempts = await update(
        sender,
        sender.read,
        consumer,
        lambda state: Change(project_id="mine"),
        RetryPolicy(attempts=4, timeout_seconds=60, wait_initial=0.001, wait_max=0.01),
    )
    assert by_attempts.exhausted and by_attempts.attempts == 4
    assert by_attempts.outcome.reason is Reason.GENERATION_CONFLICT
    assert [e.expected_generation for e in sender.sent] == [1, 2, 3, 4]

    sender = AlwaysOvertaken(consumer)
    bound = 0.3
    began = time.monotonic()
    by_time = await update(
        sender,
        sender.read,
        consumer,
        lambda state: Change(project_id="mine"),
        RetryPolicy(attempts=10**6, timeout_seconds=bound, wait_initial=0.001, wait_max=0.02),
    )
    took = time.monotonic() - began
    assert by_time.exhausted and 2 < by_time.attempts < 10**6
    assert bound <= took < bound + 2.0, took
    assert all(e.expected_generation is not UNCONDITIONAL for e in sender.sent)
    assert [e.expected_generation for e in sender.sent] == list(range(1, len(sender.sent) + 1))


def _outcome(
    event: ConsumerEvent, kind: OutcomeKind, reason: Reason | None, state: ConsumerState | None
) -> EventOutcome:
    return EventOutcome(
        event_id=event.event_id,
        consumer_uuid=event.consumer_uuid,
        kind=kind,
        reason=reason,
        generation_after=None if state is None else state.generation,
        original=OutcomeKind.APPLIED if kind is OutcomeKind.DUPLICATE else None,
        state_after=state,
        message=None,
        source=EventSource("events", 0, 0),
    )


class Scripted:
    """A sender whose first answer is ``first`` and every later one ``applied``; the
    reads it serves and the events it was sent are kept."""

    def __init__(self, consumer: str, kind: OutcomeKind, reason: Reason | None) -> None:
        self.kind, self.reason = kind, reason
        self.state = ConsumerState(consumer, 4, False, "p", "u", None, str(uuid.uuid4()))
        self.sent: list[ConsumerEvent] = []
        self.reads = 0

    async def read(self, consumer: str) -> ConsumerState | None:
        self.reads += 1
        return self.state

    async def send_and_wait(
        self, event: ConsumerEvent, *, wait_seconds: float | None = None
    ) -> EventOutcome:
        self.sent.append(event)
        if len(self.sent) == 1:
            # Another writer moved the consumer on; the rejection does not carry it.
            self.state = replace(self.state, generation=self.state.generation + 3)
            return _outcome(event, self.kind, self.reason, None)
        return _outcome(event, OutcomeKind.APPLIED, None, self.state)


#: Every outcome an event can end in: (kind, reason).
EVERY_OUTCOME = [
    (OutcomeKind.APPLIED, None),
    (OutcomeKind.DUPLICATE, None),
    *((kind, reason) for kind, reasons in REASONS_BY_OUTCOME.items() for reason in sorted(reasons)),
]
#: Only losing a race is worth deciding again (DESIGN.md: "on generation_conflict or
#: consumer_exists re-reads the state and retries"); everything else is final.
RETRIED = {
    (OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT),
    (OutcomeKind.REJECTED, Reason.CONSUMER_EXISTS),
}


@pytest.mark.parametrize(
    ("kind", "reason"), EVERY_OUTCOME, ids=[f"{k}-{r}" for k, r in EVERY_OUTCOME]
)
async def test_update_retries_only_a_lost_race_and_ends_at_once_on_any_other_outcome(
    kind: OutcomeKind, reason: Reason | None
) -> None:
    """A lost race (``generation_conflict``, ``consumer_exists``) is decided again from
    a fresh read, conditional on what was read; any other outcome (``consumer_not_found``,
    ``event_id_reused``, invalid, failed, applied...) is the answer, after one event:
    retrying it would send N pointless events and end in "exhausted"."""
    consumer = str(uuid.uuid4())
    sender = Scripted(consumer, kind, reason)
    result = await update(
        sender,
        sender.read,
        consumer,
        lambda state: Change(project_id="mine"),
        RetryPolicy(attempts=5, timeout_seconds=60, wait_initial=0.001, wait_max=0.01),
    )
    assert not result.exhausted
    if (kind, reason) in RETRIED:
        assert result.attempts == 2 and len(sender.sent) == 2
        assert result.outcome.kind is OutcomeKind.APPLIED
        # No state in the rejection: read again, and the retry names what was read.
        assert sender.reads == 2
        assert [e.expected_generation for e in sender.sent] == [4, 7]
    else:
        assert result.attempts == 1 and len(sender.sent) == 1 and sender.reads == 1
        assert (result.outcome.kind, result.outcome.reason) == (kind, reason)


async def test_update_waits_with_backoff_between_retries() -> None:
    """The retry waits (stamina's backoff) instead of hammering the topic: with a first
    wait of 0.2 s, two events are at least that far apart."""
    consumer = str(uuid.uuid4())
    sender = Scripted(consumer, OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT)
    began = time.monotonic()
    result = await update(
        sender,
        sender.read,
        consumer,
        lambda state: Change(project_id="mine"),
        RetryPolicy(attempts=3, timeout_seconds=60, wait_initial=0.2, wait_max=0.2, wait_jitter=0),
    )
    assert result.attempts == 2 and time.monotonic() - began >= 0.2


class Recording(Scripted):
    """``Scripted``, also keeping what the loop passed: the read's UUID, each wait."""

    def __init__(self, consumer: str, kind: OutcomeKind, reason: Reason | None) -> None:
        super().__init__(consumer, kind, reason)
        self.read_uuids: list[str] = []
        self.waits: list[float | None] = []

    async def read(self, consumer: str) -> ConsumerState | None:
        self.read_uuids.append(consumer)
        return await super().read(consumer)

    async def send_and_wait(
        self, event: ConsumerEvent, *, wait_seconds: float | None = None
    ) -> EventOutcome:
        self.waits.append(wait_seconds)
        return await super().send_and_wait(event, wait_seconds=wait_seconds)


async def test_update_sends_what_change_asks_under_the_callers_name_wait_and_limit() -> None:
    """Each attempt calls ``change`` with the state it read, sends the fields it returns
    under the caller's producer name, waits as long as the caller said, and reads the
    consumer it was asked about; its events are held to the caller's size limit."""
    consumer = str(uuid.uuid4())
    sender = Recording(consumer, OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT)
    seen: list[ConsumerState | None] = []

    def change(state: ConsumerState | None) -> Change:
        seen.append(state)
        return Change(project_id="proj", user_id="user", consumer_type="VM")

    policy = RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.001, wait_jitter=0)
    result = await update(
        sender, sender.read, consumer, change, policy, wait_seconds=7.5, producer="writer"
    )
    assert result.attempts == 2
    assert [s.generation if s else None for s in seen] == [4, 7]
    assert sender.read_uuids == [consumer, consumer] and sender.waits == [7.5, 7.5]
    for event in sender.sent:
        assert (event.project_id, event.user_id, event.consumer_type) == ("proj", "user", "VM")
        assert event.producer == "writer"

    too_small = Recording(consumer, OutcomeKind.APPLIED, None)
    with pytest.raises(InvalidEvent) as refused:
        await update(too_small, too_small.read, consumer, change, policy, max_bytes=100)
    assert refused.value.reason is Reason.TOO_LARGE and too_small.sent == []


def test_a_conditional_delete_carries_the_callers_name_and_limit() -> None:
    consumer = str(uuid.uuid4())
    state = ConsumerState(consumer, 3, False, "p", "u", None, str(uuid.uuid4()))
    event = conditional_event(consumer, state, Change(delete=True), producer="writer")
    assert (event.type, event.expected_generation, event.producer) == (
        EventType.DELETE,
        3,
        "writer",
    )
    with pytest.raises(InvalidEvent) as refused:
        conditional_event(consumer, state, Change(delete=True), max_bytes=100)
    assert refused.value.reason is Reason.TOO_LARGE


async def test_update_waits_as_its_policy_says_and_retries_on_the_lost_race() -> None:
    """The waits between attempts, as stamina's hooks saw them: without jitter exactly
    ``wait_initial`` doubling up to ``wait_max``; with it, at most that much more; and
    what was retried is the lost race itself."""
    consumer = str(uuid.uuid4())
    policy = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.002, wait_jitter=0)
    with retries_seen() as seen:
        sender = AlwaysOvertaken(consumer)
        await update(sender, sender.read, consumer, lambda state: Change(), policy)
    # (stamina reports each wait as a difference of running sums: equal up to rounding)
    assert [d.wait_for for d in lost_races(seen)] == pytest.approx([0.001, 0.002, 0.002])

    jittered = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.002, wait_jitter=0.004)
    with retries_seen() as seen:
        sender = AlwaysOvertaken(consumer)
        await update(sender, sender.read, consumer, lambda state: Change(), jittered)
    waits = [d.wait_for for d in lost_races(seen)]
    ceilings = [0.001, 0.002, 0.002]
    assert len(waits) == 3
    rounding = 1e-12
    assert all(c - rounding <= w <= c + 0.004 for c, w in zip(ceilings, waits, strict=True)), waits
    assert any(w > c + rounding for c, w in zip(ceilings, waits, strict=True)), waits


def lost_races(seen: list[RetryDetails]) -> list[RetryDetails]:
    """The retries of ``update()``'s lost races (stamina's hooks are process-wide: a
    retry elsewhere in the process, another test's leftover task, is not ours)."""
    return [d for d in seen if str(d.caused_by) == "rejected: generation_conflict"]


@contextmanager
def retries_seen() -> Iterator[list[RetryDetails]]:
    """Every retry stamina makes in the block (its process-wide hooks, restored after)."""
    seen: list[RetryDetails] = []
    previous = get_on_retry_hooks()
    set_on_retry_hooks([seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(previous)


async def test_without_retries_a_lost_race_is_the_answer() -> None:
    """``RetryPolicy.no_retries()`` (public API): one event, and a lost race
    comes back as exhausted, for the caller to see."""
    consumer = str(uuid.uuid4())
    sender = AlwaysOvertaken(consumer)
    result = await update(
        sender, sender.read, consumer, lambda state: Change(), RetryPolicy.no_retries()
    )
    assert (result.attempts, result.exhausted, len(sender.sent)) == (1, True, 1)
    assert result.outcome.reason is Reason.GENERATION_CONFLICT
