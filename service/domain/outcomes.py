"""Outcomes and their reasons: every value the contract names is defined here, once.

``schemas/outcome.schema.json`` and ``schemas/dead-letter.schema.json`` list the same
values; ``tests/contract`` holds the schema files to these enums, so a reason added here
and forgotten there (or the other way round) fails a test rather than a reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from service.domain.consumer import ConsumerState


class OutcomeKind(StrEnum):
    """Exactly one per event (DESIGN.md, *Outcomes*)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    INVALID = "invalid"
    FAILED = "failed"


class Reason(StrEnum):
    """Why an event was not applied; which outcome a reason belongs to is below."""

    # rejected: the precondition did not hold, or the id was reused
    CONSUMER_EXISTS = "consumer_exists"
    GENERATION_CONFLICT = "generation_conflict"
    CONSUMER_NOT_FOUND = "consumer_not_found"
    EVENT_ID_REUSED = "event_id_reused"
    # invalid: the record is not a valid consumer event (dead-lettered)
    NOT_JSON = "not_json"
    NOT_UTF8 = "not_utf8"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    KEY_MISMATCH = "key_mismatch"
    UNDECODABLE = "undecodable"
    # failed: compare-and-swap retries ran out (dead-lettered)
    CAS_RETRIES_EXHAUSTED = "cas_retries_exhausted"


REJECTED_REASONS: Final = frozenset(
    {
        Reason.CONSUMER_EXISTS,
        Reason.GENERATION_CONFLICT,
        Reason.CONSUMER_NOT_FOUND,
        Reason.EVENT_ID_REUSED,
    }
)
INVALID_REASONS: Final = frozenset(
    {
        Reason.NOT_JSON,
        Reason.NOT_UTF8,
        Reason.SCHEMA_VIOLATION,
        Reason.UNSUPPORTED_VERSION,
        Reason.TOO_LARGE,
        Reason.KEY_MISMATCH,
        Reason.UNDECODABLE,
    }
)
FAILED_REASONS: Final = frozenset({Reason.CAS_RETRIES_EXHAUSTED})
#: The reasons each outcome may carry (applied and duplicate: see ``Outcome``).
REASONS_BY_OUTCOME: Final = {
    OutcomeKind.REJECTED: REJECTED_REASONS,
    OutcomeKind.INVALID: INVALID_REASONS,
    OutcomeKind.FAILED: FAILED_REASONS,
}
#: Reasons a dead letter carries (``error.reason``).
DEAD_LETTER_REASONS: Final = INVALID_REASONS | FAILED_REASONS


@dataclass(frozen=True, slots=True)
class EventSource:
    """Where the event was read from; recorded in the inbox row."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """The outcome of applying one valid event: what the daemon reports, commits, counts.

    ``generation_after`` is the consumer row's generation once the event was processed
    (unchanged for a rejection; the tombstone's for a deleted consumer; None when no row
    exists).  For a DUPLICATE it is the original's, and ``original``/``reason`` re-report
    the original outcome.  ``attempts`` counts compare-and-swap attempts (1 without a
    retry).  ``invalid`` outcomes are decided before apply, by the record boundary.
    ``state_after`` is the consumer as the event left it (as the rules saw it: for a
    rejection or a duplicate the current row; None when there is no row), so a writer
    that lost can decide again without reading.
    """

    event_id: str
    consumer_uuid: str
    kind: OutcomeKind
    reason: Reason | None
    generation_after: int | None
    attempts: int
    original: OutcomeKind | None = None
    state_after: ConsumerState | None = None
