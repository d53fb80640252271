"""The dry run: the outcomes a replay would have, computed without writing anything.

It is THE dry run: replay's ``--dry-run`` and the tests use it.  It must carry state
from one batch to the next: the dry run of batch 2 must see what batch 1 *would* have
done (a create in batch 1 makes a conditional update in batch 2 applicable).  So it
keeps an in-memory overlay of the would-be consumer rows and inbox entries,
reads the live database (read-only transactions, no locks held between batches) only
for what the overlay does not know yet, and decides each batch with the very same
pure rules the Applier uses (``service.domain.rules.plan``).

Why not "apply in a transaction and roll it back": one transaction over a whole
replay would hold SQLite's write lock (or PostgreSQL row locks) for its duration and
stall the running daemon; a scratch copy of a large database is slow.  The overlay
costs memory only for events that would be *recorded* (an all-duplicates dry run keeps
almost nothing) and for the consumers touched.  The price: the prediction is of the
database as it was read; a daemon writing meanwhile can change what really happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.config import Settings
from service.domain.consumer import ConsumerState, Owners
from service.domain.events import ConsumerEvent
from service.domain.inbox import InboxWrite, ProcessedEvent
from service.domain.outcomes import EventSource, Outcome
from service.domain.rules import plan, validate
from service.store.unit_of_work import UnitOfWorkFactory


@dataclass(frozen=True, slots=True)
class GenerationChange:
    """A consumer's generation (and tombstone state) before the run and after it."""

    before: int | None
    after: int | None
    deleted_before: bool
    deleted_after: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.deleted_before != self.deleted_after


class DryRun:
    """Decides batches like ``Applier.apply_batch`` would, one after the other."""

    def __init__(self, units: UnitOfWorkFactory, settings: Settings) -> None:
        self._units = units
        self._placeholders = Owners(settings.incomplete_project_id, settings.incomplete_user_id)
        self._consumers: dict[str, ConsumerState | None] = {}
        self._inbox: dict[str, ProcessedEvent] = {}
        self._before: dict[str, ConsumerState | None] = {}

    async def apply_batch(
        self, items: Sequence[tuple[ConsumerEvent, EventSource | None]]
    ) -> list[Outcome]:
        events = [event for event, _ in items]
        for event in events:
            validate(event)
        if not events:
            return []
        hashes = [event.payload_hash() for event in events]
        await self._load(events)
        consumers = {u: s for u, s in self._consumers.items() if s is not None}
        result = plan(
            list(zip(events, hashes, strict=True)), consumers, self._inbox, self._placeholders
        )
        for write in result.writes:
            self._consumers[write.after.uuid] = write.after
        outcomes = []
        for event, digest, decision in zip(events, hashes, result.decisions, strict=True):
            if decision.inbox is not InboxWrite.NONE:
                self._inbox[event.event_id] = decision.record(event, digest)
            outcomes.append(
                Outcome(
                    event_id=event.event_id,
                    consumer_uuid=event.consumer_uuid,
                    kind=decision.kind,
                    reason=decision.reason,
                    generation_after=decision.generation_after,
                    attempts=1,
                    original=decision.original,
                    state_after=decision.state_after,
                )
            )
        return outcomes

    async def _load(self, events: list[ConsumerEvent]) -> None:
        """Read what the overlay does not know yet, in one read-only transaction
        (``TransientDatabaseError`` when the database cannot answer now)."""
        uuids = {e.consumer_uuid for e in events} - self._consumers.keys()
        ids = {e.event_id for e in events} - self._inbox.keys()
        if not uuids and not ids:
            return
        async with self._units.begin(read_only=True) as unit:
            inbox = await unit.load_inbox(ids)
            found = await unit.load_consumers(uuids)
        self._inbox.update(inbox)
        for uuid in uuids:
            self._consumers[uuid] = found.get(uuid)
            self._before[uuid] = found.get(uuid)

    def changes(self) -> dict[str, GenerationChange]:
        """Per consumer touched by the run: generation before and (would-be) after."""
        result = {}
        for uuid, before in self._before.items():
            after = self._consumers.get(uuid)
            result[uuid] = GenerationChange(
                before=before.generation if before else None,
                after=after.generation if after else None,
                deleted_before=bool(before and before.deleted),
                deleted_after=bool(after and after.deleted),
            )
        return result
