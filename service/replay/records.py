"""One record as replay sees it, whatever it was read from, and the JSONL archive format.

An archive line is one Kafka record::

    {"topic": "consumer-events", "partition": 0, "offset": 12,
     "timestamp": "2024-05-01T12:00:00.000Z", "timestamp_ms": 1714564800000,
     "key": "<consumer uuid>", "value": {...the event document...},
     "headers": [{"name": "content-type", "value": "application/..."}]}

``value`` is the parsed JSON document when the record's bytes are strict JSON (so that
``jq`` and ``grep`` work on archives); otherwise it is base64 with ``"value_base64":
true`` (not UTF-8, not JSON, duplicate keys, NaN...), and ``null`` for a record without
a value.  Keys and header values are text, or base64 with ``"key_base64": true`` /
``"base64": true``.  ``partition``, ``offset`` and ``value`` are required; the rest is
optional, so a hand-written archive needs little, but replay holds a record to the
daemon's rules: without ``key`` (the ``consumer_uuid``) an event is ``key_mismatch``.
A number too large for Python (more than 4,300 digits, beyond the float range) stays
in the line as written and makes its event a ``schema_violation``.

A JSON value is re-serialised compactly when replayed: the event (and its payload
hash, computed over the canonical document) is the same, but the byte size checked
against ``max_event_bytes`` is that of the compact form.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.contract.decode import InvalidEvent, dump_json, load_json, parse_float, parse_int
from service.domain.errors import InvalidInput


class ArchiveLineError(InvalidInput, ValueError):
    """A line of an archive file is not an archive record (the message says why)."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A record to replay; ``topic`` is where it was read (or, for an archive, written)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: Set when the record could not be decoded off the wire (``UndecodableRecord``):
    #: what could not be read; ``key``/``value`` hold whatever could, ``headers`` is empty.
    undecodable: str | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text_or_b64(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return _b64(data), True


def to_archive_line(record: SourceRecord) -> str:
    """The JSONL line (without newline) of ``record``."""
    doc: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if record.timestamp_ms is not None:
        moment = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        doc["timestamp"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        doc["timestamp_ms"] = record.timestamp_ms
    if record.key is None:
        doc["key"] = None
    else:
        doc["key"], key_b64 = _text_or_b64(record.key)
        if key_b64:
            doc["key_base64"] = True
    if record.value is None:
        doc["value"] = None
    else:
        try:
            doc["value"] = load_json(record.value)
        except InvalidEvent:
            doc["value"] = _b64(record.value)
            doc["value_base64"] = True
    headers = []
    for name, value in record.headers:
        text, is_b64 = _text_or_b64(value)
        header: dict[str, Any] = {"name": name, "value": text}
        if is_b64:
            header["base64"] = True
        headers.append(header)
    if headers:
        doc["headers"] = headers
    try:  # a number too large for Python is written back digit for digit
        return dump_json(doc)
    except RecursionError:  # parsed, but one level deeper inside the line is too deep
        assert record.value is not None
        doc["value"] = _b64(record.value)
        doc["value_base64"] = True
        return dump_json(doc)


def _int_field(doc: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ArchiveLineError(f'"{name}" must be an integer >= 0')
    return value


def _bytes_field(value: Any, is_b64: Any, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ArchiveLineError(f"{what} must be a string or null")
    if is_b64 is True:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ArchiveLineError(f"{what} is flagged base64 but is not valid base64") from None
    return value.encode("utf-8", "surrogatepass")


def from_archive_line(line: str, default_topic: str) -> SourceRecord:
    """Parse one archive line; ``ArchiveLineError`` for anything that is not a record."""
    try:  # numbers too large for Python stay text: the event decoder refuses them later
        doc = json.loads(line, parse_int=parse_int, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        raise ArchiveLineError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ArchiveLineError("not JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise ArchiveLineError("a line must be a JSON object")
    if "value" not in doc:
        raise ArchiveLineError('"value" is missing')
    partition = _int_field(doc, "partition", required=True)
    offset = _int_field(doc, "offset", required=True)
    assert partition is not None and offset is not None
    topic = doc.get("topic", default_topic)
    if not isinstance(topic, str) or not topic:
        raise ArchiveLineError('"topic" must be a non-empty string')
    value_raw = doc["value"]
    if doc.get("value_base64") is True:
        value = _bytes_field(value_raw, True, '"value"')
    elif value_raw is None:
        value = None
    else:
        try:
            value = dump_json(value_raw).encode("utf-8", "surrogatepass")
        except RecursionError:
            raise ArchiveLineError('"value" is nested too deeply: store it base64') from None
    headers_raw = doc.get("headers") or []
    if not isinstance(headers_raw, list):
        raise ArchiveLineError('"headers" must be a list')
    headers: list[tuple[str, bytes]] = []
    for header in headers_raw:
        if not isinstance(header, dict) or not isinstance(header.get("name"), str):
            raise ArchiveLineError('each header must be {"name": ..., "value": ...}')
        header_value = _bytes_field(header.get("value"), header.get("base64"), "a header value")
        headers.append((header["name"], header_value or b""))
    return SourceRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=_int_field(doc, "timestamp_ms", required=False),
        key=_bytes_field(doc.get("key"), doc.get("key_base64"), '"key"'),
        value=value,
        headers=tuple(headers),
    )
