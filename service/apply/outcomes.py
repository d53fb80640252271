"""The outcome of applying one event: what the daemon reports, commits and counts.

``invalid`` is not here: it is decided before apply, by the daemon's decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OutcomeKind(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"


class Reason(StrEnum):
    CONSUMER_EXISTS = "consumer_exists"
    GENERATION_CONFLICT = "generation_conflict"
    CONSUMER_NOT_FOUND = "consumer_not_found"
    EVENT_ID_REUSED = "event_id_reused"
    CAS_RETRIES_EXHAUSTED = "cas_retries_exhausted"


@dataclass(frozen=True, slots=True)
class EventSource:
    """Where the event was read from; recorded in the inbox row."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """Exactly one per event.

    ``generation_after`` is the consumer row's generation once the event was processed
    (unchanged for a rejection; the tombstone's for a deleted consumer; None when no row
    exists).  For a DUPLICATE it is the original's, and ``original``/``reason`` re-report
    the original outcome.  ``attempts`` counts compare-and-swap attempts (1 without a
    retry).
    """

    event_id: str
    consumer_uuid: str
    kind: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    attempts: int
    original: OutcomeKind | None = None
