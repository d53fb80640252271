"""The pure decision rules: one event + the consumer's state + its inbox entry -> a decision.

No SQL, no asyncio, no clock: everything here is a function of its arguments, so the
rules can be tested exhaustively without a database and the batch path can replay them
in memory.  The applier (``service.apply.applier``) reads the state, calls these rules and
performs the intended write as a compare-and-swap.

The rules, from DESIGN.md:

* The inbox decides first.  An event id recorded with the same payload hash is a
  DUPLICATE that re-reports the original outcome; with another hash it is REJECTED
  ``event_id_reused`` and nothing is written (the original row is never overwritten).
  A FAILED row does not count as processed: the event is evaluated again and, if it
  now settles, its row is replaced.
* ``expected_generation`` absent: apply on top of whatever is current (create when the
  consumer does not exist; delete of a missing consumer is ``consumer_not_found``).
* ``null``: the consumer must not exist; a tombstone counts as not existing, and a
  re-create continues its generation (tombstone at g -> live at g + 1).
* ``N``: the consumer must exist (not tombstoned) at generation N.
* Every accepted event increments the generation by exactly one, a delete included, so
  "generation = number of accepted changes" holds over the whole life of a UUID.
* On create, absent owners become the configured *incomplete* placeholders; on update
  absent owners and type keep their current values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import assert_never

from service.domain.consumer import MAX_GENERATION, ConsumerState, Owners
from service.domain.errors import InvalidInput
from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason

_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CONSUMER_TYPE = re.compile(r"^[A-Z0-9_]+$")
_NAME_MAX = 255


class InvalidEventError(InvalidInput):
    """The event cannot be applied as given (the daemon should have dead-lettered it).

    Raised before any database work, so hostile values (NUL bytes, over-long ids,
    non-canonical UUIDs) fail with a clear message instead of a driver error.
    """


def validate(event: ConsumerEvent) -> None:
    """Raise ``InvalidEventError`` unless every stored field fits the contract and the
    database (PostgreSQL text cannot hold NUL; lone surrogates are not UTF-8)."""
    for name in ("event_id", "consumer_uuid"):
        value = getattr(event, name)
        if not isinstance(value, str) or not _CANONICAL_UUID.fullmatch(value):
            raise InvalidEventError(f"{name} is not a canonical lower-case dashed UUID")
    if not isinstance(event.type, EventType):
        raise InvalidEventError("type is not consumer.upsert or consumer.delete")
    precondition = event.expected_generation
    if (
        precondition is not UNCONDITIONAL
        and precondition is not None
        and (
            not isinstance(precondition, int)
            or isinstance(precondition, bool)
            or not 0 <= precondition <= MAX_GENERATION
        )
    ):
        raise InvalidEventError("expected_generation must be absent, null or an integer >= 0")
    for name in ("project_id", "user_id", "consumer_type"):
        value = getattr(event, name)
        if value is None:
            continue
        if not isinstance(value, str) or not 1 <= len(value) <= _NAME_MAX:
            raise InvalidEventError(f"{name} must be a string of 1 to {_NAME_MAX} characters")
        if "\x00" in value:
            raise InvalidEventError(f"{name} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(f"{name} is not valid Unicode text") from None
    if event.consumer_type is not None and not _CONSUMER_TYPE.fullmatch(event.consumer_type):
        raise InvalidEventError("consumer_type must match ^[A-Z0-9_]+$")


class WriteKind(StrEnum):
    #: Insert-if-absent: fails (0 rows) if any row with the UUID exists.
    INSERT = "insert"
    #: Compare-and-swap on the row as read (generation and tombstone state).
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class Write:
    """The intended consumer write: ``before`` is what the CAS expects (None: absent)."""

    kind: WriteKind
    before: ConsumerState | None
    after: ConsumerState


@dataclass(frozen=True, slots=True)
class Decision:
    kind: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    write: Write | None
    inbox: InboxWrite
    original: OutcomeKind | None = None
    #: The consumer as this decision leaves it (None: no row), for the outcome record.
    state_after: ConsumerState | None = None

    def record(
        self,
        event: ConsumerEvent,
        payload_hash: str,
        *,
        attempts: int = 1,
        source: EventSource | None = None,
    ) -> ProcessedEvent:
        """The inbox row this decision records for ``event`` (``processed_at`` is the
        store's to set)."""
        return ProcessedEvent(
            event_id=event.event_id,
            consumer_uuid=event.consumer_uuid,
            payload_hash=payload_hash,
            outcome=self.kind,
            reason=self.reason,
            generation_after=self.generation_after,
            event_type=event.type,
            attempts=attempts,
            source=source,
        )


def _from_inbox(
    payload_hash: str, entry: ProcessedEvent, current: ConsumerState | None
) -> Decision:
    if entry.payload_hash != payload_hash:
        return Decision(
            OutcomeKind.REJECTED,
            Reason.EVENT_ID_REUSED,
            current.generation if current else None,
            None,
            InboxWrite.NONE,
            state_after=current,
        )
    return Decision(
        OutcomeKind.DUPLICATE,
        entry.reason,
        entry.generation_after,
        None,
        InboxWrite.NONE,
        original=entry.outcome,
        state_after=current,
    )


def _reject(reason: Reason, current: ConsumerState | None, inbox: InboxWrite) -> Decision:
    generation = current.generation if current else None
    return Decision(OutcomeKind.REJECTED, reason, generation, None, inbox, state_after=current)


def _accept(before: ConsumerState | None, after: ConsumerState, inbox: InboxWrite) -> Decision:
    kind = WriteKind.INSERT if before is None else WriteKind.UPDATE
    write = Write(kind, before, after)
    return Decision(OutcomeKind.APPLIED, None, after.generation, write, inbox, state_after=after)


def _create(
    event: ConsumerEvent, current: ConsumerState | None, placeholders: Owners
) -> ConsumerState:
    """A new life: from nothing (generation 1) or from a tombstone (its generation + 1)."""
    return ConsumerState(
        uuid=event.consumer_uuid,
        generation=(current.generation if current else 0) + 1,
        deleted=False,
        project_id=placeholders.project_id if event.project_id is None else event.project_id,
        user_id=placeholders.user_id if event.user_id is None else event.user_id,
        consumer_type=event.consumer_type,
        last_event_id=event.event_id,
    )


def _update(event: ConsumerEvent, current: ConsumerState) -> ConsumerState:
    return replace(
        current,
        generation=current.generation + 1,
        project_id=current.project_id if event.project_id is None else event.project_id,
        user_id=current.user_id if event.user_id is None else event.user_id,
        consumer_type=current.consumer_type if event.consumer_type is None else event.consumer_type,
        last_event_id=event.event_id,
    )


def _tombstone(event: ConsumerEvent, current: ConsumerState) -> ConsumerState:
    return replace(
        current, generation=current.generation + 1, deleted=True, last_event_id=event.event_id
    )


def decide(
    event: ConsumerEvent,
    payload_hash: str,
    current: ConsumerState | None,
    inbox: ProcessedEvent | None,
    placeholders: Owners,
) -> Decision:
    """The outcome of ``event`` given the consumer row (``None``: no row) and the inbox
    row for its event id (``None``: never seen)."""
    inbox_write = InboxWrite.INSERT
    if inbox is not None:
        if inbox.outcome is not OutcomeKind.FAILED or inbox.payload_hash != payload_hash:
            return _from_inbox(payload_hash, inbox, current)
        inbox_write = InboxWrite.REPLACE_FAILED

    # Exhaustive: a new EventType that is not handled here fails mypy (assert_never)
    # and, at run time, raises instead of falling into another type's branch.
    match event.type:
        case EventType.UPSERT:
            return _decide_upsert(event, current, placeholders, inbox_write)
        case EventType.DELETE:
            return _decide_delete(event, current, inbox_write)
        case _:
            assert_never(event.type)


def _decide_upsert(
    event: ConsumerEvent,
    current: ConsumerState | None,
    placeholders: Owners,
    inbox_write: InboxWrite,
) -> Decision:
    live = current is not None and current.live
    precondition = event.expected_generation
    if precondition is None or (precondition is UNCONDITIONAL and not live):
        if live:
            return _reject(Reason.CONSUMER_EXISTS, current, inbox_write)
        return _accept(current, _create(event, current, placeholders), inbox_write)
    if current is None or not live:
        return _reject(Reason.CONSUMER_NOT_FOUND, current, inbox_write)
    if precondition is not UNCONDITIONAL and current.generation != precondition:
        return _reject(Reason.GENERATION_CONFLICT, current, inbox_write)
    return _accept(current, _update(event, current), inbox_write)


def _decide_delete(
    event: ConsumerEvent, current: ConsumerState | None, inbox_write: InboxWrite
) -> Decision:
    if current is None or not current.live:
        return _reject(Reason.CONSUMER_NOT_FOUND, current, inbox_write)
    precondition = event.expected_generation
    if precondition is None:
        # "Must not exist" cannot hold for something we are asked to delete.
        return _reject(Reason.CONSUMER_EXISTS, current, inbox_write)
    if precondition is not UNCONDITIONAL and current.generation != precondition:
        return _reject(Reason.GENERATION_CONFLICT, current, inbox_write)
    return _accept(current, _tombstone(event, current), inbox_write)


def decide_failed(
    payload_hash: str, current: ConsumerState | None, inbox: ProcessedEvent | None
) -> Decision:
    """The outcome once compare-and-swap retries are exhausted.

    If the event settled elsewhere in the meantime (another daemon, a replay), that
    wins: it is a duplicate (or a reused id).  Otherwise FAILED is recorded, replacing
    an earlier FAILED row of the same payload; it does not count as processed.
    """
    inbox_write = InboxWrite.INSERT
    if inbox is not None:
        if inbox.outcome is not OutcomeKind.FAILED or inbox.payload_hash != payload_hash:
            return _from_inbox(payload_hash, inbox, current)
        inbox_write = InboxWrite.REPLACE_FAILED
    return Decision(
        OutcomeKind.FAILED,
        Reason.CAS_RETRIES_EXHAUSTED,
        current.generation if current else None,
        None,
        inbox_write,
        state_after=current,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """What a sequence of events does, as one-at-a-time processing would do it.

    ``writes`` holds one net write per touched consumer (CAS from the state as read to
    the final state), sorted by UUID so that concurrent transactions lock rows in one
    order; ``recorded`` lists the events (by position) whose inbox row is written.
    """

    decisions: list[Decision]
    writes: list[Write]
    recorded: list[int]


def plan(
    events: Sequence[tuple[ConsumerEvent, str]],
    consumers: Mapping[str, ConsumerState],
    inbox: Mapping[str, ProcessedEvent],
    placeholders: Owners,
) -> Plan:
    """Decide ``events`` (each with its payload hash) in order, tracking in memory the
    consumer states and inbox rows that earlier events of the sequence produce."""
    state: dict[str, ConsumerState] = {}
    seen: dict[str, ProcessedEvent] = {}
    decisions: list[Decision] = []
    recorded: list[int] = []
    for position, (event, payload_hash) in enumerate(events):
        uuid = event.consumer_uuid
        current = state[uuid] if uuid in state else consumers.get(uuid)
        entry = seen.get(event.event_id) or inbox.get(event.event_id)
        decision = decide(event, payload_hash, current, entry, placeholders)
        decisions.append(decision)
        if decision.write is not None:
            state[uuid] = decision.write.after
        if decision.inbox is not InboxWrite.NONE:
            seen[event.event_id] = decision.record(event, payload_hash)
            recorded.append(position)
    writes = [
        Write(
            WriteKind.INSERT if consumers.get(uuid) is None else WriteKind.UPDATE,
            consumers.get(uuid),
            after,
        )
        for uuid, after in sorted(state.items())
    ]
    return Plan(decisions, writes, recorded)


def owner_names(writes: Iterable[Write]) -> tuple[set[str], set[str], set[str]]:
    """Project ids, user ids and consumer type names the writes refer to."""
    projects: set[str] = set()
    users: set[str] = set()
    types: set[str] = set()
    for write in writes:
        projects.add(write.after.project_id)
        users.add(write.after.user_id)
        if write.after.consumer_type is not None:
            types.add(write.after.consumer_type)
    return projects, users, types
