"""The inbox (``processed_events``): the one type of an event already processed.

``ProcessedEvent`` is the row everywhere: what the rules read (the first six fields),
what the store writes and what ``show`` lists.  The fields the rules do not need are
optional because a read for deciding does not fetch them; a row the store writes has
them all (the store refuses one without ``event_type`` or ``attempts``).  How to write
a row (insert, or replace a FAILED one) is an ``InboxWrite`` that travels beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from service.domain.events import EventType
from service.domain.outcomes import EventSource, OutcomeKind, Reason


@dataclass(frozen=True, slots=True)
class ProcessedEvent:
    """One ``processed_events`` row."""

    event_id: str
    consumer_uuid: str
    payload_hash: str
    outcome: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    #: The rest is not needed by the rules: None when the read did not fetch it.
    event_type: EventType | None = None
    attempts: int | None = None
    source: EventSource | None = None
    #: Set by the store when it writes the row (UTC).
    processed_at: datetime | None = None


class InboxWrite(StrEnum):
    NONE = "none"
    INSERT = "insert"
    #: The event had a FAILED row with the same payload: replace it.
    REPLACE_FAILED = "replace_failed"
