"""What a refused record says, exactly: the reason, the JSON path and the one-line message
that become its dead-letter headers (``error.reason``, ``error.path``, ``error.message``),
the only account of the refusal an operator gets.  One row per way to be refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import pytest

from service.contract.decode import InvalidEvent, decode_document, decode_event
from service.domain.outcomes import Reason

BASE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "6F1C2B9E-3D4A-4C1E-9B7A-2E5F8D0C1A34",
    "type": "consumer.upsert",
    "consumer_uuid": "0B7E4A52-9C1D-4F3E-8A26-5D9B1C7E3F80",
    "occurred_at": "2024-05-01T14:00:00.5+02:00",
}
NOT_OBJECT = "an event is a JSON object, not "
UNSUPPORTED = "this schema_version is not supported (this service knows 1)"
TYPE = "type should be 'consumer.upsert' or 'consumer.delete'"


def with_(**fields: Any) -> bytes:
    return json.dumps(BASE | fields).encode()


def without(name: str) -> bytes:
    return json.dumps({k: v for k, v in BASE.items() if k != name}).encode()


CASES: list[tuple[str, bytes | None, Reason, str | None, str]] = [
    ("tombstone", None, Reason.NOT_JSON, None, "the record has no value (a tombstone)"),
    ("empty", b"", Reason.NOT_JSON, None, "the value is empty"),
    ("blank", b" \n\t ", Reason.NOT_JSON, None, "the value is empty"),
    (
        "not utf-8",
        b'{"a": "\xc3\x28"}',
        Reason.NOT_UTF8,
        None,
        "invalid UTF-8 at byte 7: invalid continuation byte",
    ),
    ("nan", b'{"a": NaN}', Reason.NOT_JSON, None, "NaN and Infinity are not JSON numbers"),
    (
        "infinity",
        b'{"a": -Infinity}',
        Reason.NOT_JSON,
        None,
        "NaN and Infinity are not JSON numbers",
    ),
    ("duplicate key", b'{"a": 1, "a": 2}', Reason.NOT_JSON, None, "an object has a duplicate key"),
    ("deep", b"[" * 100_000, Reason.NOT_JSON, None, "nested too deeply"),
    ("syntax", b'{"a": }', Reason.NOT_JSON, None, "Expecting value at line 1 column 7"),
    (
        "syntax line 2",
        b'{\n "a": tru}',
        Reason.NOT_JSON,
        None,
        "Expecting value at line 2 column 7",
    ),
    ("array", b"[1]", Reason.SCHEMA_VIOLATION, "$", NOT_OBJECT + "an array"),
    ("null", b"null", Reason.SCHEMA_VIOLATION, "$", NOT_OBJECT + "null"),
    ("boolean", b"false", Reason.SCHEMA_VIOLATION, "$", NOT_OBJECT + "a boolean"),
    ("integer", b"7", Reason.SCHEMA_VIOLATION, "$", NOT_OBJECT + "a number"),
    ("float", b"7.5", Reason.SCHEMA_VIOLATION, "$", NOT_OBJECT + "a number"),
    ("string", b'"event"', Reason.SCHEMA_VIOLATION, "$", NOT_OBJECT + "a string"),
    (
        "version 2",
        with_(schema_version=2),
        Reason.UNSUPPORTED_VERSION,
        "$.schema_version",
        UNSUPPORTED,
    ),
    (
        "version 2.0",
        with_(schema_version=2.0),
        Reason.UNSUPPORTED_VERSION,
        "$.schema_version",
        UNSUPPORTED,
    ),
    (
        "version huge",
        b'{"schema_version": 1' + b"0" * 5000 + b"}",
        Reason.UNSUPPORTED_VERSION,
        "$.schema_version",
        UNSUPPORTED,
    ),
    (
        "version 1e400",
        b'{"schema_version": 1e400}',
        Reason.UNSUPPORTED_VERSION,
        "$.schema_version",
        UNSUPPORTED,
    ),
    (
        "version true",
        with_(schema_version=True),
        Reason.SCHEMA_VIOLATION,
        "$.schema_version",
        "booleans are not integers",
    ),
    (
        "version text",
        with_(schema_version="1"),
        Reason.SCHEMA_VIOLATION,
        "$.schema_version",
        "Input should be 1",
    ),
    ("no type", without("type"), Reason.SCHEMA_VIOLATION, "$.type", TYPE),
    ("unknown type", with_(type="consumer.merge"), Reason.SCHEMA_VIOLATION, "$.type", TYPE),
    (
        "unknown field",
        with_(colour="red"),
        Reason.SCHEMA_VIOLATION,
        "$.colour",
        "unknown field (a new field needs a new schema_version)",
    ),
    (
        "owner on delete",
        with_(type="consumer.delete", project_id="p"),
        Reason.SCHEMA_VIOLATION,
        "$.project_id",
        "unknown field (a new field needs a new schema_version)",
    ),
    ("no event id", without("event_id"), Reason.SCHEMA_VIOLATION, "$.event_id", "Field required"),
    (
        "generation true",
        with_(expected_generation=True),
        Reason.SCHEMA_VIOLATION,
        "$.expected_generation",
        "booleans are not integers",
    ),
    (
        "producer null",
        with_(producer=None),
        Reason.SCHEMA_VIOLATION,
        "$.producer",
        "leave the field out instead of sending null",
    ),
    (
        "generation 1e400",
        json.dumps(BASE).encode()[:-1] + b', "expected_generation": 1e400}',
        Reason.SCHEMA_VIOLATION,
        "$.expected_generation",
        "a number far too large for this field",
    ),
    (
        "30 february",
        with_(occurred_at="2024-02-30T00:00:00Z"),
        Reason.SCHEMA_VIOLATION,
        "$.occurred_at",
        "not a calendar date (e.g. 30 February)",
    ),
    (
        "no zone",
        with_(occurred_at="2024-02-03T00:00:00"),
        Reason.SCHEMA_VIOLATION,
        "$.occurred_at",
        "should be an RFC 3339 timestamp with a time zone, years 1970-2999",
    ),
]


@pytest.mark.parametrize(
    ("value", "reason", "path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_refusal_says_its_reason_path_and_message(
    value: bytes | None, reason: Reason, path: str | None, message: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=1 << 20)
    error = caught.value
    assert (error.reason, error.path, error.message, error.exception) == (
        reason, path, message, None,
    )  # fmt: skip
    where = f" at {path}" if path else ""
    assert str(error) == error.describe() == f"{reason.value}{where}: {message}"


def test_a_document_that_is_not_an_object_is_refused_the_same_way() -> None:
    for doc, kind in (([], "an array"), (None, "null"), ("x", "a string"), (2.5, "a number")):
        with pytest.raises(InvalidEvent) as caught:
            decode_document(doc)
        assert (caught.value.path, caught.value.message) == ("$", NOT_OBJECT + kind)


def test_a_long_message_is_cut_to_500_characters_ending_in_an_ellipsis() -> None:
    error = InvalidEvent(Reason.SCHEMA_VIOLATION, "word " * 200, "$." + "k" * 300)
    assert len(error.message) == 500 and error.message.endswith("word…")
    assert error.message[:-1] == ("word " * 100)[:499]
    assert error.path is not None and len(error.path) == 200 and error.path.endswith("k…")
    exact = InvalidEvent(Reason.NOT_JSON, "x" * 500)
    assert exact.message == "x" * 500


def test_a_message_is_one_line_with_single_spaces_and_encodable() -> None:
    error = InvalidEvent(Reason.NOT_JSON, "  first\n\n second\tthird \ud800 ")
    assert error.message == "first second third \\ud800"
    assert error.describe() == "not_json: first second third \\ud800"


class _NoOffset(tzinfo):
    """A zone that does not know its offset: as good as none."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


def test_a_timestamp_built_in_python_must_carry_a_zone() -> None:
    aware = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    event = decode_document(BASE | {"occurred_at": aware})
    assert (event.occurred_at, event.occurred_at_nanos) == (aware, 0)
    for naive in (datetime(2024, 5, 1, 12, 0), datetime(2024, 5, 1, 12, 0, tzinfo=_NoOffset())):
        with pytest.raises(InvalidEvent) as caught:
            decode_document(BASE | {"occurred_at": naive})
        assert (caught.value.path, caught.value.message) == (
            "$.occurred_at", "a timestamp needs a time zone",
        )  # fmt: skip
