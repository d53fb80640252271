"""Read-modify-write of one consumer: OpenStack Placement's loop (GET the generation,
PUT with it, on ``409 concurrent_update`` read again and retry), over Kafka.

``update`` reads the consumer (the read API), lets ``change(state)`` compute the new
fields, sends a *conditional* event with the generation it read (or "must not exist"
for a consumer that is not live), waits for the outcome, and when it lost
(``generation_conflict``: someone changed it first; ``consumer_exists``: someone
created it first) decides again from the state the outcome reports (``state_after``:
what it lost to; a read when the outcome has none), with stamina's exponential backoff
and jitter, bounded by attempts and by time.  A stale precondition is never turned into
an unconditional write: every event it sends names the state it was computed from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import stamina

from service.domain.consumer import ConsumerState
from service.domain.errors import ConcurrencyConflict
from service.domain.events import ConsumerEvent, EventType, Precondition
from service.domain.outcomes import OutcomeKind, Reason
from service.producer.events import new_event
from service.producer.replies import EventOutcome

#: The rejections that mean "another writer won": decide again from fresh state.
LOST: Final = frozenset({Reason.GENERATION_CONFLICT, Reason.CONSUMER_EXISTS})


@dataclass(frozen=True, slots=True)
class Change:
    """What ``change(state)`` wants: new owners/type (None keeps the current one), or a
    deletion."""

    project_id: str | None = None
    user_id: str | None = None
    consumer_type: str | None = None
    delete: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds of the loop: attempts (1: no retry) and total seconds; backoff waits."""

    attempts: int = 10
    timeout_seconds: float = 60.0
    wait_initial: float = 0.02
    wait_max: float = 1.0
    wait_jitter: float = 0.1

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        return cls(attempts=1)


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The final outcome, how many events it took, and whether retries ran out on a
    conflict (then ``outcome`` is that last rejection)."""

    outcome: EventOutcome
    attempts: int
    exhausted: bool = False


class _Lost(ConcurrencyConflict):
    """This attempt lost to another writer (stamina retries on it)."""

    def __init__(self, outcome: EventOutcome) -> None:
        super().__init__(outcome.summary)
        self.outcome = outcome


class Sends(Protocol):
    async def send_and_wait(
        self, event: ConsumerEvent, *, wait_seconds: float | None = None
    ) -> EventOutcome: ...


Read = Callable[[str], Awaitable[ConsumerState | None]]
ChangeFunction = Callable[[ConsumerState | None], Change]


def conditional_event(
    consumer_uuid: str,
    state: ConsumerState | None,
    change: Change,
    *,
    producer: str | None = None,
    max_bytes: int | None = None,
) -> ConsumerEvent:
    """The event that makes ``change`` only if the consumer is still as in ``state``."""
    live = state is not None and state.live
    if change.delete:
        # Deleting what is not live is consumer_not_found whatever the precondition;
        # the generation read (or 0) keeps the event conditional even so.
        precondition: Precondition = state.generation if state is not None else 0
        return new_event(
            EventType.DELETE,
            consumer_uuid,
            expected_generation=precondition,
            producer=producer,
            max_bytes=max_bytes,
        )
    assert state is None or isinstance(state.generation, int)
    return new_event(
        EventType.UPSERT,
        consumer_uuid,
        expected_generation=state.generation if live and state is not None else None,
        project_id=change.project_id,
        user_id=change.user_id,
        consumer_type=change.consumer_type,
        producer=producer,
        max_bytes=max_bytes,
    )


async def update(
    sender: Sends,
    read: Read,
    consumer_uuid: str,
    change: ChangeFunction,
    policy: RetryPolicy,
    *,
    wait_seconds: float | None = None,
    producer: str | None = None,
    max_bytes: int | None = None,
) -> UpdateResult:
    """Run the loop (see the module docstring); ``OutcomeTimeout`` if an outcome does not
    come within ``wait_seconds`` (that event may still be applied: nothing is resent)."""
    state = await read(consumer_uuid)
    attempts = 0
    try:
        async for attempt in stamina.retry_context(
            on=_Lost,
            attempts=policy.attempts,
            timeout=policy.timeout_seconds,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_jitter,
        ):
            with attempt:
                attempts += 1
                event = conditional_event(
                    consumer_uuid, state, change(state), producer=producer, max_bytes=max_bytes
                )
                outcome = await sender.send_and_wait(event, wait_seconds=wait_seconds)
                if outcome.kind is OutcomeKind.REJECTED and outcome.reason in LOST:
                    # What it lost to: the outcome's state, else a fresh read.
                    state = outcome.state_after or await read(consumer_uuid)
                    raise _Lost(outcome)
                return UpdateResult(outcome, attempts)
    except _Lost as lost:
        return UpdateResult(lost.outcome, attempts, exhausted=True)
    raise AssertionError("unreachable: stamina returns or raises")  # pragma: no cover
