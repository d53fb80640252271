"""The validated consumer event, as the rest of the service sees it.

Decoding (bytes -> ``ConsumerEvent``) lives in ``service.contract.decode``; this
module is the plain value the apply rules take, with no Kafka and no SQL in it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import orjson


class EventType(StrEnum):
    UPSERT = "consumer.upsert"
    DELETE = "consumer.delete"


class _Unconditional:
    """``expected_generation`` absent: apply on top of whatever is current."""

    _instance: _Unconditional | None = None

    def __new__(cls) -> _Unconditional:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCONDITIONAL"

    def __reduce__(self) -> str:
        return "UNCONDITIONAL"


#: The precondition of an event without ``expected_generation``.
UNCONDITIONAL: Final = _Unconditional()

#: ``UNCONDITIONAL``; ``None`` (must not exist); or ``N`` (must exist at generation N).
Precondition = _Unconditional | None | int

SCHEMA_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ConsumerEvent:
    """One logical change of one consumer; UUIDs are canonical lower-case dashed strings.

    ``occurred_at`` holds the instant to the microsecond (what ``datetime`` can);
    ``occurred_at_nanos`` the rest, 0-999 nanoseconds, which producers such as Java's
    ``Instant.toString`` send. Both count in the payload hash.
    """

    event_id: str
    type: EventType
    consumer_uuid: str
    occurred_at: datetime
    expected_generation: Precondition = UNCONDITIONAL
    project_id: str | None = None
    user_id: str | None = None
    consumer_type: str | None = None
    producer: str | None = None
    schema_version: int = SCHEMA_VERSION
    occurred_at_nanos: int = 0

    @property
    def is_unconditional(self) -> bool:
        return self.expected_generation is UNCONDITIONAL

    def to_document(self) -> dict[str, Any]:
        """The JSON document of this event (absent fields stay absent)."""
        doc: dict[str, Any] = {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "type": self.type.value,
            "consumer_uuid": self.consumer_uuid,
            "occurred_at": _rfc3339(self.occurred_at, self.occurred_at_nanos),
        }
        if self.expected_generation is not UNCONDITIONAL:
            doc["expected_generation"] = self.expected_generation
        for name in ("project_id", "user_id", "consumer_type", "producer"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_document(), separators=(",", ":"), ensure_ascii=False).encode()

    def payload_hash(self) -> str:
        """SHA-256 of the canonical document: equal for the same logical event however it was
        serialised (key order, spacing, UUID case), different for any change of meaning.
        ``producer`` is left out: it says who sent it, not what the change is."""
        doc = self.to_document()
        doc.pop("producer", None)
        return hashlib.sha256(canonical_json(doc)).hexdigest()


def canonical_json(doc: Any) -> bytes:
    """``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` as
    UTF-8, byte for byte: the spelling every stored payload hash was computed over.

    orjson with sorted keys writes the same bytes ~10x faster for what an event document
    holds (strings, integers, null, booleans, nesting of those); ``tests/unit/
    test_canonical_json.py`` proves it over arbitrary documents.  Where orjson would
    write other bytes or refuse, the standard library writes them as before: floats
    (``1e+16`` there, ``1e16`` in orjson), integers beyond 64 bits, non-``str`` keys,
    subclasses of the JSON types (an enum member's spelling is its class's business),
    and strings that are not valid Unicode (which then fail to encode, as they did).
    """
    if _plain(doc):
        try:
            return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


def _plain(value: Any) -> bool:
    """True when orjson spells ``value`` exactly as the standard library does."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is dict:  # loops, not all(...): this runs once per event
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _SCALARS and not _plain(item)):
                return False
        return True
    if kind is list:
        return all(type(item) in _SCALARS or _plain(item) for item in value)
    return False


#: Types orjson writes as the standard library does (``int`` within 64 bits: beyond,
#: orjson refuses and ``canonical_json`` falls back).
_SCALARS: Final = frozenset({str, int, bool, type(None)})


def _rfc3339(moment: datetime, nanos: int = 0) -> str:
    """UTC with a ``Z``: one spelling per instant, so the payload hash is stable.

    Without sub-microsecond nanoseconds this is byte for byte the spelling the payload
    hashes of existing inbox rows were computed over (no fraction when the microseconds
    are 0, else 6 digits); with them, 9 fraction digits.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    if nanos:
        if not 0 < nanos < 1000 or moment.tzinfo is None:
            raise ValueError("occurred_at_nanos is 0-999, on a timestamp with a zone")
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + f"{nanos:03d}Z"
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
