"""Bytes (or a parsed document) -> ``ConsumerEvent``: the one gate every entry point uses.

The daemon, the producer (before it sends), the CLI and replay all call these functions,
so an event the producer accepts is exactly an event the daemon accepts. They raise
nothing but ``InvalidEvent``: a poison record must turn into a dead-letter entry with a
machine-readable reason, never into a crash of the consume loop.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any, Final, NoReturn

from pydantic import ValidationError

from service.contract import fast_path
from service.contract.models import (
    EVENT_ADAPTER,
    ConsumerUpsertV1,
    OutsizedNumber,
    sub_microsecond_nanos,
)
from service.domain.errors import InvalidInput
from service.domain.events import SCHEMA_VERSION, UNCONDITIONAL, ConsumerEvent, EventType
from service.domain.outcomes import Reason

#: Messages and paths end up in Kafka headers: keep them short.
_MAX_MESSAGE: Final = 500
_MAX_PATH: Final = 200


class InvalidEvent(InvalidInput):
    """A record that is not a valid consumer event; retrying it cannot help.

    ``path`` is the JSON path of the offending field for ``schema_violation``
    (``$`` for the document itself), else ``None``. ``message`` is one line and never
    quotes the offending value (it may be huge, or personal data). ``exception`` is the
    class name of the unexpected exception an ``undecodable`` record raised (the
    ``error.exception`` dead-letter header), else ``None``.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        path: str | None = None,
        exception: str | None = None,
    ) -> None:
        self.reason = reason
        self.message = _one_line(message, _MAX_MESSAGE)
        self.path = None if path is None else _one_line(path, _MAX_PATH)
        self.exception = exception
        super().__init__(self.describe())

    def describe(self) -> str:
        """``reason at path: message``, the one-line form the CLI prints."""
        where = f" at {self.path}" if self.path else ""
        return f"{self.reason.value}{where}: {self.message}"


def undecodable(exc: Exception) -> InvalidEvent:
    """What a record boundary raises for an exception the decoder does not know: the
    record's fault all the same (``../shared/DESIGN.md``, *Failure classes*). Only the
    class name is kept; ``str(exc)`` may quote the record."""
    name = type(exc).__name__
    return InvalidEvent(Reason.UNDECODABLE, f"{name} while decoding the record", exception=name)


def check_size(size: int, max_bytes: int) -> None:
    """The one size rule of an event, for the daemon and every producer alike: at most
    ``max_bytes`` bytes (``CONSUMERGEN_MAX_EVENT_BYTES``), the limit itself included."""
    if size > max_bytes:
        raise InvalidEvent(Reason.TOO_LARGE, f"{size} bytes, more than the limit of {max_bytes}")


def decode_event(value: bytes | None, *, max_bytes: int) -> ConsumerEvent:
    """Decode a Kafka record value. The size is checked before any parsing."""
    if value is None:
        raise InvalidEvent(Reason.NOT_JSON, "the record has no value (a tombstone)")
    check_size(len(value), max_bytes)
    event = fast_path.event_from_bytes(value)
    if event is not None:
        return event
    return validate_strictly(load_json(value))


def load_json(value: bytes) -> Any:
    """UTF-8 then strict JSON: no NaN/Infinity, no duplicate keys, no byte-order mark."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            Reason.NOT_UTF8, f"invalid UTF-8 at byte {exc.start}: {exc.reason}"
        ) from None
    if not text.strip():
        raise InvalidEvent(Reason.NOT_JSON, "the value is empty")
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
            parse_int=parse_int,
            parse_float=parse_float,
        )
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            Reason.NOT_JSON, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _NotJson as exc:
        raise InvalidEvent(Reason.NOT_JSON, str(exc)) from None
    except RecursionError:
        raise InvalidEvent(Reason.NOT_JSON, "nested too deeply") from None


def decode_document(doc: Any) -> ConsumerEvent:
    """Validate a parsed JSON document (e.g. a JSONL line) against the v1 contract."""
    if type(doc) is dict:
        event = fast_path.event_from_document(doc)
        if event is not None:
            return event
    return validate_strictly(doc)


def validate_strictly(doc: Any) -> ConsumerEvent:
    """``decode_document`` through the pydantic models only: the path that names what
    is wrong with a document (``fast_path`` only ever accepts, and only what this does)."""
    if not isinstance(doc, dict):
        raise InvalidEvent(
            Reason.SCHEMA_VIOLATION,
            f"an event is a JSON object, not {_json_type(doc)}",
            "$",
        )
    _check_version(doc.get("schema_version"))
    try:
        model = EVENT_ADAPTER.validate_python(doc)
    except ValidationError as exc:
        _raise_violation(exc)
    expected = model.expected_generation if model.expected_generation_given else UNCONDITIONAL
    owner = model if isinstance(model, ConsumerUpsertV1) else None
    return ConsumerEvent(
        event_id=model.event_id,
        type=EventType(model.type),
        consumer_uuid=model.consumer_uuid,
        occurred_at=model.occurred_at,
        expected_generation=expected,
        project_id=owner.project_id if owner else None,
        user_id=owner.user_id if owner else None,
        consumer_type=owner.consumer_type if owner else None,
        producer=model.producer,
        schema_version=model.schema_version,
        occurred_at_nanos=sub_microsecond_nanos(doc.get("occurred_at")),
    )


def parse_int(text: str) -> int | OutsizedNumber:
    """``json.loads``' ``parse_int``: an integer, or ``OutsizedNumber`` for one with more
    digits than ``int()`` converts (it raises ``ValueError`` there, and only there: the
    parser has already checked that ``text`` is a JSON integer)."""
    try:
        return int(text)
    except ValueError:
        return OutsizedNumber(text)


def parse_float(text: str) -> float | OutsizedNumber:
    """``json.loads``' ``parse_float``: a float, or ``OutsizedNumber`` for a number beyond
    the float range (``1e400`` would silently become ``inf``, which is not JSON)."""
    value = float(text)
    return OutsizedNumber(text) if math.isinf(value) else value


def dump_json(doc: Any) -> str:
    """Compact JSON of a document ``load_json`` returned: ``OutsizedNumber`` is written
    back as the digits it was read from, so the document round-trips exactly."""
    nonce = secrets.token_hex(16)
    texts: list[str] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, OutsizedNumber):
            raise TypeError(f"{type(value).__name__} is not a JSON value")
        texts.append(value.text)
        return f"{nonce}{len(texts) - 1}"

    out = json.dumps(doc, default=placeholder, separators=(",", ":"), ensure_ascii=False)
    if not texts:
        return out
    return re.sub(f'"{nonce}([0-9]+)"', lambda m: texts[int(m.group(1))], out)


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> NoReturn:
    raise _NotJson("NaN and Infinity are not JSON numbers")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two parsers can disagree about which of two equal keys wins: refuse the ambiguity."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise _NotJson("an object has a duplicate key")
    return doc


def _check_version(version: Any) -> None:
    """An integer other than 1 is another contract version: say so instead of listing
    every field that differs. Anything else is left to the schema (``schema_violation``)."""
    if isinstance(version, bool):
        return
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    # Every number too large for a float or an int is an integer (and not 1).
    if isinstance(version, OutsizedNumber) or (
        isinstance(version, int) and version != SCHEMA_VERSION
    ):
        raise InvalidEvent(
            Reason.UNSUPPORTED_VERSION,
            f"this schema_version is not supported (this service knows {SCHEMA_VERSION})",
            "$.schema_version",
        )


def _raise_violation(exc: ValidationError) -> NoReturn:
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = list(error["loc"])
    # A discriminated union puts the chosen tag first: it is not part of the document.
    if loc and loc[0] in {t.value for t in EventType}:
        loc = loc[1:]
    if error["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        loc = ["type"]
        message = "type should be 'consumer.upsert' or 'consumer.delete'"
    elif error["type"] == "extra_forbidden":
        message = "unknown field (a new field needs a new schema_version)"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    raise InvalidEvent(Reason.SCHEMA_VIOLATION, message, _json_path(loc)) from None


def _json_path(loc: list[int | str]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _one_line(text: str, limit: int) -> str:
    """Single line, bounded, and encodable as UTF-8 (a key may hold a lone surrogate)."""
    flat = " ".join(text.split())
    safe = flat.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"
