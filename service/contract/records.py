"""Build (and read back) the records the daemon writes besides its database rows.

Dead-letter headers and outcome records are part of the contract (``schemas/``), so they
are built here, next to the models that validate them, rather than ad hoc in the daemon:
every record leaves validated against the same rules the schema files state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

import orjson
from pydantic import ValidationError

from service.contract.decode import InvalidEvent
from service.contract.models import CANONICAL_UUID_PATTERN, DeadLetterHeaders, OutcomeRecord
from service.contract.state import state_document
from service.domain.consumer import ConsumerState
from service.domain.outcomes import (
    FAILED_REASONS,
    INVALID_REASONS,
    REASONS_BY_OUTCOME,
    REJECTED_REASONS,
    OutcomeKind,
)

#: Header names the service owns on a dead-letter record (replaced if already present).
ERROR_HEADERS: Final = (
    "error.class",
    "error.reason",
    "error.message",
    "error.path",
    "error.exception",
    "origin.topic",
    "origin.partition",
    "origin.offset",
    "attempts",
    "first_failed_at",
    "failed_at",
)

#: Optional header the producer sets; the daemon never relies on it (the body is the truth).
CONTENT_TYPE_HEADER: Final = "content-type"
EVENT_CONTENT_TYPE: Final = "application/vnd.consumergen.event.v1+json"


def dead_letter_headers(
    original_headers: Iterable[tuple[str, bytes]],
    *,
    error_class: str,
    reason: str,
    message: str,
    origin_topic: str,
    origin_partition: int,
    origin_offset: int,
    attempts: int,
    first_failed_at: datetime,
    failed_at: datetime,
    path: str | None = None,
    exception: str | None = None,
) -> list[tuple[str, bytes]]:
    """The headers of a dead-letter record: the original ones (minus any of ours, which a
    record re-driven from the dead-letter topic carries), then the error headers.

    ``error_class`` is ``invalid`` or ``failed``; ``reason`` one of the dead-letter reasons
    (enum members are fine: they are strings); ``exception`` the class name of what an
    ``undecodable`` record raised. Anything else raises ``ValueError``.
    """
    values = {
        "error.class": str(error_class),
        "error.reason": str(reason),
        "error.message": _bounded(message),
        "origin.topic": origin_topic,
        "origin.partition": str(origin_partition),
        "origin.offset": str(origin_offset),
        "attempts": str(attempts),
        "first_failed_at": utc_timestamp(first_failed_at.astimezone(UTC)),
        "failed_at": utc_timestamp(failed_at.astimezone(UTC)),
    }
    if path is not None:
        values["error.path"] = path
    if exception is not None:
        values["error.exception"] = exception
    try:  # a bug in the caller must not write a record the contract does not allow
        DeadLetterHeaders.model_validate(values)
    except ValidationError as exc:
        raise ValueError(f"invalid dead-letter headers: {exc}") from None
    kept = [(name, value) for name, value in original_headers if name not in OWN_HEADERS]
    return kept + [(name, text.encode("utf-8")) for name, text in values.items()]


def invalid_event_headers(
    error: InvalidEvent,
    *,
    original_headers: Iterable[tuple[str, bytes]],
    origin_topic: str,
    origin_partition: int,
    origin_offset: int,
    failed_at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    """Dead-letter headers for a record ``decode_event`` refused (one attempt)."""
    moment = failed_at or datetime.now(UTC)
    return dead_letter_headers(
        original_headers,
        error_class="invalid",
        reason=error.reason.value,
        message=error.message,
        path=error.path,
        exception=error.exception,
        origin_topic=origin_topic,
        origin_partition=origin_partition,
        origin_offset=origin_offset,
        attempts=1,
        first_failed_at=moment,
        failed_at=moment,
    )


def parse_dead_letter_headers(headers: Iterable[tuple[str, bytes]]) -> DeadLetterHeaders:
    """Read the error headers back (last value wins, as Kafka consumers usually do)."""
    return DeadLetterHeaders.model_validate(
        {name: value.decode("utf-8", "replace") for name, value in headers}
    )


def outcome_record(
    *,
    event_id: str | None,
    consumer_uuid: str | None,
    outcome: str,
    reason: str | None,
    generation_after: int | None,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    processed_at: datetime | None = None,
    original_outcome: str | None = None,
    message: str | None = None,
    state_after: ConsumerState | None = None,
) -> bytes:
    """The value of an outcomes-topic record (UTF-8 JSON); key it with ``outcome_key``.

    ``outcome``, ``reason`` and ``original_outcome`` take the names of
    ``schemas/outcome.schema.json`` (any ``StrEnum`` with those values will do); a
    combination the schema forbids (e.g. applied with a reason) raises ``ValueError``.

    The daemon builds one per event, so this checks the schema's rules directly (the
    same decisions as ``OutcomeRecord``, which a test holds it to) and has orjson write
    the document (a dict in the schema's field order: a new field is one more entry),
    instead of a pydantic validation and a JSON round trip per record.
    """
    outcome_ = outcome if type(outcome) is str else str(outcome)
    reason_ = None if reason is None else reason if type(reason) is str else str(reason)
    original = None if original_outcome is None else str(original_outcome)
    moment = processed_at or datetime.now(UTC)
    problem = _outcome_problem(
        event_id,
        consumer_uuid,
        outcome_,
        reason_,
        generation_after,
        original,
        source_topic,
        source_partition,
        source_offset,
        moment,
    )
    if problem is not None:
        raise ValueError(f"invalid outcome record: {problem}")
    doc: dict[str, object] = {
        "schema_version": 1,
        "event_id": event_id,
        "consumer_uuid": consumer_uuid,
        "outcome": outcome_,
        "reason": reason_,
        "message": None if message is None else _bounded(message),
        "generation_after": generation_after,
    }
    if original is not None:
        doc["original_outcome"] = original
    doc["source"] = {"topic": source_topic, "partition": source_partition, "offset": source_offset}
    doc["processed_at"] = _stamp(moment)
    if state_after is not None:  # additive (schema: state_after), last so old bytes stay
        doc["state_after"] = state_document(state_after)
    return orjson.dumps(doc)


@lru_cache(maxsize=64)
def _stamp(moment: datetime) -> str:
    """``utc_timestamp``, remembered: the records of a batch share one ``processed_at``."""
    return utc_timestamp(moment)


_CANONICAL_UUID: Final = re.compile(CANONICAL_UUID_PATTERN)
_OUTCOMES: Final = frozenset(item.value for item in OutcomeKind)
_ALL_REASONS: Final = REJECTED_REASONS | INVALID_REASONS | FAILED_REASONS
_REASONS_OF: Final = {kind.value: reasons for kind, reasons in REASONS_BY_OUTCOME.items()}
_ORIGINALS: Final = frozenset({"applied", "rejected", "invalid", "failed"})


def _natural(value: object) -> bool:
    """A JSON integer >= 0 (``bool`` is not one, as in the strict model)."""
    return type(value) is int and value >= 0


def _outcome_problem(
    event_id: str | None,
    consumer_uuid: str | None,
    outcome: str,
    reason: str | None,
    generation_after: int | None,
    original: str | None,
    topic: str,
    partition: int,
    offset: int,
    moment: datetime,
) -> str | None:
    """What ``schemas/outcome.schema.json`` refuses in these fields, or None."""
    for name, uuid in (("event_id", event_id), ("consumer_uuid", consumer_uuid)):
        if uuid is not None and not (isinstance(uuid, str) and _CANONICAL_UUID.match(uuid)):
            return f"{name} is not a canonical UUID"
    if outcome not in _OUTCOMES:
        return f"unknown outcome {outcome!r}"
    if reason is not None and reason not in _ALL_REASONS:
        return f"unknown reason {reason!r}"
    if generation_after is not None and not _natural(generation_after):
        return "generation_after must be an integer >= 0"
    if outcome == OutcomeKind.APPLIED.value:
        if reason is not None or generation_after is None:
            return "applied needs reason null and a generation_after"
    elif outcome in _REASONS_OF and reason not in _REASONS_OF[outcome]:
        return f"reason {reason!r} does not fit outcome {outcome}"
    if original is not None and original not in _ORIGINALS:
        return f"unknown original_outcome {original!r}"
    if (outcome == OutcomeKind.DUPLICATE.value) != (original is not None):
        return "original_outcome is required for duplicate and only there"
    if not (isinstance(topic, str) and topic):
        return "source.topic must be a non-empty string"
    if not (_natural(partition) and _natural(offset)):
        return "source.partition and source.offset must be integers >= 0"
    if not 1970 <= moment.astimezone(UTC).year <= 2999:
        return "processed_at must be in the years 1970-2999"
    return None


def outcome_key(event_id: str | None) -> bytes | None:
    """Outcome records are keyed by event id (none when it could not be read)."""
    return None if event_id is None else event_id.encode("utf-8")


def parse_outcome_record(value: bytes) -> OutcomeRecord:
    return OutcomeRecord.model_validate_json(value)


def utc_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z``: one spelling per instant."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bounded(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- dead letters cut to fit their topic (service/sinks/fit.py) -------------------------

#: Headers on a dead letter that had to be cut to fit the dead-letter topic's
#: ``max.message.bytes``: which parts were cut, and the original sizes of all three.
TRUNCATION_HEADERS: Final = (
    "origin.truncated",
    "origin.value_bytes",
    "origin.key_bytes",
    "origin.headers_bytes",
)

#: Every header name the service owns on a dead letter (an original header of one of
#: these names, on a record re-driven from the dead-letter topic, is replaced).
OWN_HEADERS: Final = ERROR_HEADERS + TRUNCATION_HEADERS

#: The parts of a record that may be cut, in the order they are cut.
TRUNCATABLE_PARTS: Final = ("value", "key", "headers")


def original_sizes(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]
) -> tuple[int, int, int]:
    """(value, key, headers) sizes in bytes of a record as ``origin.*_bytes`` state them:
    a null value or key counts 0; the headers count each name's UTF-8 bytes plus its
    value's bytes."""
    header_bytes = sum(len(name.encode("utf-8")) + len(data or b"") for name, data in headers)
    return len(value or b""), len(key or b""), header_bytes


def truncation_headers(
    cut: Iterable[str], value_bytes: int, key_bytes: int, headers_bytes: int
) -> list[tuple[str, bytes]]:
    """The headers that mark a cut dead letter (none when nothing was cut).

    ``cut`` names the parts cut (``value``, ``key``, ``headers``); anything else, or a
    negative size, raises ``ValueError``."""
    parts = list(dict.fromkeys(cut))
    if not parts:
        return []
    if (
        any(part not in TRUNCATABLE_PARTS for part in parts)
        or min(value_bytes, key_bytes, headers_bytes) < 0
    ):
        raise ValueError(f"invalid truncation marks: {parts} {value_bytes} {key_bytes}")
    values = {
        "origin.truncated": ",".join(parts),
        "origin.value_bytes": str(value_bytes),
        "origin.key_bytes": str(key_bytes),
        "origin.headers_bytes": str(headers_bytes),
    }
    return [(name, text.encode("ascii")) for name, text in values.items()]
