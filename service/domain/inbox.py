"""The inbox (``processed_events``): what the rules know of an event already processed."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.domain.outcomes import OutcomeKind, Reason


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A ``processed_events`` row as the rules see it."""

    event_id: str
    consumer_uuid: str
    payload_hash: str
    outcome: OutcomeKind
    reason: Reason | None
    generation_after: int | None


class InboxWrite(StrEnum):
    NONE = "none"
    INSERT = "insert"
    #: The event had a FAILED row with the same payload: replace it.
    REPLACE_FAILED = "replace_failed"
