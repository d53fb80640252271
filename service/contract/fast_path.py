"""The common case of decoding, in one cheap pass: orjson, then lean checks of the v1 fields.

``decode_event`` ran every record through the strict ``json.loads`` (hooks for duplicate
keys, NaN, outsized numbers) and the pydantic models: ~20 µs and the largest CPU cost
of admitting an event.  Nearly every record is a well-formed event, so this module
decides those with orjson and direct checks of what ``models.py`` (and so
``schemas/consumer-event.v1.schema.json``) requires, and answers ``None`` for anything
it is not sure of; the strict path then decides it as before, with the exact reason,
path and message.  It never refuses a record itself, so it can only be wrong by
accepting what the strict path refuses, or by building another event: the tests in
``tests/contract/test_fast_path.py`` compare the two paths over the corpus and over
generated near-valid documents.

What is left to the strict path: any ``\\u`` escape (so that a string's text is the
bytes' text, which the duplicate-key count below needs, and no surrogate can appear), a
byte-order mark, any number that is not an integer (orjson reads a 30-digit integer as
a float), nested values, and every document that fails a check here.

Duplicate keys: orjson keeps the last one silently.  With no ``\\u`` escape, every comma
in the bytes is a separator or a comma inside a key or a string value, and the
decoded strings hold exactly the latter (of the members that survived); so a flat
document's bytes have ``len(doc) - 1 + commas in the decoded strings`` commas if and
only if no member was dropped.  A duplicate adds a separator (and its dropped strings'
commas), so ``len(doc) - 1`` commas in all (the common case, counted without looking
at the strings) also proves there was none, flat or not; and ``event_from_document``
accepts no value that is not a scalar.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

import orjson

from service.contract.models import (
    CONSUMER_TYPE_PATTERN,
    MAX_GENERATION,
    TIMESTAMP_PATTERN,
    UUID_PATTERN,
)
from service.domain.events import SCHEMA_VERSION, UNCONDITIONAL, ConsumerEvent, EventType

_UUID: Final = re.compile(UUID_PATTERN)
_TIMESTAMP: Final = re.compile(TIMESTAMP_PATTERN)
_CONSUMER_TYPE: Final = re.compile(CONSUMER_TYPE_PATTERN)
_MAX_NAME: Final = 255

_OWNERS: Final = frozenset({"project_id", "user_id", "consumer_type"})
_COMMON: Final = frozenset(
    {
        "schema_version",
        "event_id",
        "type",
        "consumer_uuid",
        "occurred_at",
        "expected_generation",
        "producer",
    }
)
#: Per ``type``: the event type and the fields its model allows.
_TYPES: Final = {
    EventType.UPSERT.value: (EventType.UPSERT, _COMMON | _OWNERS),
    EventType.DELETE.value: (EventType.DELETE, _COMMON),
}
_SCALARS: Final = frozenset({str, int, bool, type(None)})


def event_from_bytes(value: bytes) -> ConsumerEvent | None:
    """The event of a record value, or None: then ask the strict path."""
    if b"\\u" in value or value.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    separators = len(doc) - 1
    commas = value.count(b",")
    if commas != separators:  # commas in strings, or a duplicate key (module docstring)
        inside = _string_commas(doc)
        if inside is None or commas != separators + inside:
            return None
    return event_from_document(doc)


def event_from_document(doc: dict[str, Any]) -> ConsumerEvent | None:
    """The event of a parsed document, or None: then ask the strict path."""
    kind = doc.get("type")
    known = _TYPES.get(kind) if type(kind) is str else None
    if known is None or not doc.keys() <= known[1]:
        return None
    version = doc.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return None
    event_id = _uuid(doc.get("event_id"))
    consumer_uuid = _uuid(doc.get("consumer_uuid"))
    occurred = doc.get("occurred_at")
    if event_id is None or consumer_uuid is None or type(occurred) is not str:
        return None
    moment = _TIMESTAMP.fullmatch(occurred)
    if moment is None:
        return None
    try:
        occurred_at = datetime.fromisoformat(occurred.upper())
    except ValueError:
        return None
    expected: Any = UNCONDITIONAL
    if "expected_generation" in doc:
        expected = doc["expected_generation"]
        if expected is not None and (
            type(expected) is not int or not 0 <= expected <= MAX_GENERATION
        ):
            return None
    texts = {}
    for name in ("producer", "project_id", "user_id", "consumer_type"):
        if name in doc:
            text = doc[name]
            if type(text) is not str or not 0 < len(text) <= _MAX_NAME or "\x00" in text:
                return None
            if not text.isascii():  # a lone surrogate (a Python caller's) is not Unicode
                try:
                    text.encode()
                except UnicodeEncodeError:
                    return None
            texts[name] = text
    consumer_type = texts.get("consumer_type")
    if consumer_type is not None and not _CONSUMER_TYPE.fullmatch(consumer_type):
        return None
    return ConsumerEvent(
        event_id=event_id,
        type=known[0],
        consumer_uuid=consumer_uuid,
        occurred_at=occurred_at,
        expected_generation=expected,
        project_id=texts.get("project_id"),
        user_id=texts.get("user_id"),
        consumer_type=consumer_type,
        producer=texts.get("producer"),
        schema_version=SCHEMA_VERSION,
        occurred_at_nanos=_nanos(moment.group(5)),
    )


def _string_commas(doc: dict[str, Any]) -> int | None:
    """Commas in the keys and string values of a flat document; None if it is not flat."""
    count = 0
    for key, item in doc.items():
        kind = type(item)
        if kind not in _SCALARS:
            return None
        count += key.count(",")
        if kind is str:
            count += item.count(",")
    return count


def _nanos(fraction: str | None) -> int:
    """``models.sub_microsecond_nanos`` of the fraction the timestamp matched."""
    if fraction is None or len(fraction) <= 7:  # "." and at most 6 digits
        return 0
    return int(fraction[7:10].ljust(3, "0"))


def _uuid(value: Any) -> str | None:
    if type(value) is not str or not _UUID.fullmatch(value):
        return None
    return value.lower()
