"""The record boundary: numbers Python cannot hold, the Kafka key, unexpected errors.

Whatever bytes a record carries, ``decode_event`` and ``admit`` return an event or raise
``InvalidEvent``; an ``InvalidEvent`` never quotes the value.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from contract_schemas import DEAD_LETTER, schema_accepts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.apply import admission
from service.apply.admission import admit
from service.contract.decode import InvalidEvent, decode_event, dump_json, load_json
from service.contract.models import OutsizedNumber
from service.contract.records import invalid_event_headers, parse_dead_letter_headers
from service.domain.events import ConsumerEvent
from service.domain.outcomes import Reason

CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
KEY = CONSUMER.encode()
VALID: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
    "type": "consumer.upsert",
    "consumer_uuid": CONSUMER,
    "occurred_at": "2024-05-01T12:00:00Z",
    "project_id": "p",
}
HUGE = "9" * 4301  # one digit more than int() converts by default
MAX = 1 << 20


def with_raw(field: str, raw: str) -> bytes:
    """VALID with ``field`` set to the JSON text ``raw`` (not something json.dumps makes)."""
    doc = dict(VALID)
    doc[field] = "@@RAW@@"
    return json.dumps(doc).encode().replace(b'"@@RAW@@"', raw.encode())


def refusal(value: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=MAX)
    assert "\n" not in caught.value.message
    assert "99999" not in caught.value.describe()  # never quotes the number
    return caught.value


FIELDS = [
    "event_id",
    "type",
    "consumer_uuid",
    "occurred_at",
    "expected_generation",
    "project_id",
    "user_id",
    "consumer_type",
    "producer",
    "unknown_field",
]


@pytest.mark.parametrize("raw", [HUGE, "-" + HUGE, "1e400", "-1e400", HUGE + ".5", "9" * 100_000])
@pytest.mark.parametrize("field", FIELDS)
def test_a_huge_number_in_any_field_is_a_schema_violation_at_its_path(field: str, raw: str) -> None:
    error = refusal(with_raw(field, raw))
    assert error.reason is Reason.SCHEMA_VIOLATION
    assert error.path == f"$.{field}"


@pytest.mark.parametrize("raw", ["9" * 401, "9" * 4300, HUGE, "-" + HUGE, "1e400", "1" + "0" * 400])
def test_a_huge_schema_version_is_unsupported_and_not_quoted(raw: str) -> None:
    error = refusal(with_raw("schema_version", raw))
    assert error.reason is Reason.UNSUPPORTED_VERSION
    assert error.path == "$.schema_version"
    assert error.message == "this schema_version is not supported (this service knows 1)"


def test_the_digit_limit_is_no_edge() -> None:
    """4,300 digits parse as an int, 4,301 do not: both get the same reason and path."""
    below = refusal(with_raw("expected_generation", "9" * 4300))
    above = refusal(with_raw("expected_generation", HUGE))
    assert (below.reason, below.path) == (above.reason, above.path)


def test_a_huge_number_nested_or_in_an_array_is_refused() -> None:
    error = refusal(with_raw("project_id", f'{{"a": [1, {HUGE}]}}'))
    assert (error.reason, error.path) == (Reason.SCHEMA_VIOLATION, "$.project_id")


def test_load_json_keeps_outsized_numbers_and_dump_json_writes_them_back() -> None:
    text = f'{{"a":[{HUGE},-{HUGE},1e400,1.5,2],"b":"{HUGE}"}}'
    doc = load_json(text.encode())
    first, second, third, *rest = doc["a"]
    assert all(isinstance(n, OutsizedNumber) for n in (first, second, third))
    assert rest == [1.5, 2]
    assert "9999" not in repr(first)
    assert dump_json(doc) == text
    assert dump_json({"plain": [1, "x"]}) == '{"plain":[1,"x"]}'
    with pytest.raises(TypeError):
        dump_json({"a": object()})


def test_dump_json_writes_the_text_back_as_it_was_read() -> None:
    """Non-ASCII text stays as it is, and no string of the document, however much it looks
    like a placeholder, is taken for an outsized number."""
    text = f'{{"name":"é ✓","look-alikes":["None0","0","{HUGE}"],"n":{HUGE}}}'
    assert dump_json(load_json(text.encode())) == text
    with pytest.raises(TypeError, match=r"^object is not a JSON value$"):
        dump_json([object()])


# --- the Kafka key ----------------------------------------------------------------------

VALUE = json.dumps(VALID).encode()


def test_the_right_key_admits() -> None:
    event = admit(KEY, VALUE, MAX)
    assert event.consumer_uuid == CONSUMER


def test_an_upper_case_event_needs_the_canonical_key() -> None:
    upper = json.dumps(VALID | {"consumer_uuid": CONSUMER.upper()}).encode()
    assert admit(KEY, upper, MAX).consumer_uuid == CONSUMER
    with pytest.raises(InvalidEvent) as caught:
        admit(CONSUMER.upper().encode(), upper, MAX)
    assert caught.value.reason is Reason.KEY_MISMATCH


@pytest.mark.parametrize(
    "key",
    [
        None,
        b"",
        CONSUMER.upper().encode(),
        b"6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",  # another UUID (the event id)
        CONSUMER.replace("-", "").encode(),
        KEY + b"\n",
        b"\xff\xfe" + KEY,  # not UTF-8
        b"{" + KEY + b"}",
    ],
)
def test_any_other_key_is_a_key_mismatch(key: bytes | None) -> None:
    with pytest.raises(InvalidEvent) as caught:
        admit(key, VALUE, MAX)
    error = caught.value
    assert error.reason is Reason.KEY_MISMATCH
    assert error.path is None and error.exception is None
    assert CONSUMER not in error.message and CONSUMER.upper() not in error.message


def test_an_invalid_value_is_reported_for_the_value_whatever_the_key() -> None:
    with pytest.raises(InvalidEvent) as caught:
        admit(b"other", b"{broken", MAX)
    assert caught.value.reason is Reason.NOT_JSON


# --- exceptions the decoder does not know -----------------------------------------------


class _Surprise(Exception):
    pass


def test_an_unknown_exception_is_undecodable_with_its_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No known input raises anything but InvalidEvent any more: stand in for the next
    parser bug by making the decoder raise, and check what the boundary makes of it."""

    def broken(value: bytes | None, *, max_bytes: int) -> ConsumerEvent:
        raise _Surprise(f"the value was {value!r}")

    monkeypatch.setattr(admission, "decode_event", broken)
    with pytest.raises(InvalidEvent) as caught:
        admit(KEY, VALUE, MAX)
    error = caught.value
    assert error.reason is Reason.UNDECODABLE
    assert error.exception == "_Surprise"
    assert error.message == "_Surprise while decoding the record"
    assert "value was" not in error.describe()
    assert error.__cause__ is None and error.__suppress_context__


@pytest.mark.parametrize("stop", [asyncio.CancelledError, KeyboardInterrupt])
def test_cancellation_is_not_a_record_failure(
    monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    def cancelled(value: bytes | None, *, max_bytes: int) -> ConsumerEvent:
        raise stop

    monkeypatch.setattr(admission, "decode_event", cancelled)
    with pytest.raises(stop):
        admit(KEY, VALUE, MAX)


def test_the_exception_class_goes_into_the_dead_letter() -> None:
    error = InvalidEvent(
        Reason.UNDECODABLE, "ValueError while decoding the record", exception="ValueError"
    )
    headers = invalid_event_headers(
        error,
        original_headers=[("error.exception", b"Spoofed"), ("trace", b"t")],
        origin_topic="consumer-events",
        origin_partition=0,
        origin_offset=9,
    )
    values = {name: value.decode() for name, value in headers}
    assert [name for name, _ in headers].count("error.exception") == 1
    assert values["error.exception"] == "ValueError"
    assert values["error.reason"] == "undecodable"
    assert values["trace"] == "t"
    assert schema_accepts(DEAD_LETTER, values)
    parsed = parse_dead_letter_headers(headers)
    assert (parsed.error_reason, parsed.error_exception) == ("undecodable", "ValueError")


def test_no_exception_header_without_an_exception() -> None:
    error = InvalidEvent(Reason.KEY_MISMATCH, "the record has no key")
    headers = invalid_event_headers(
        error,
        original_headers=[("error.exception", b"Spoofed")],
        origin_topic="t",
        origin_partition=0,
        origin_offset=0,
    )
    values = {name: value.decode() for name, value in headers}
    assert "error.exception" not in values
    assert values["error.reason"] == "key_mismatch"
    assert schema_accepts(DEAD_LETTER, values)


# --- property: arbitrary bytes ----------------------------------------------------------


def _mutations() -> st.SearchStrategy[bytes]:
    """Near-valid values: byte flips, truncations, huge numbers and odd text spliced in."""
    splices = st.sampled_from(
        [
            b"9" * 4301,
            b"-" + b"9" * 5000,
            b"1e400",
            b"1e-400",
            b"\xff",
            b"\x00",
            b"\\ud800",
            b'"\\ud800"',
            b"[" * 3000,
            b"{" * 3000,
            b"NaN",
            b"0" * 5000 + b"1",
            b"1." + b"0" * 5000,
        ]
    )

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        value = bytearray(VALUE)
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["flip", "cut", "splice"]))
            at = draw(st.integers(0, len(value)))
            if kind == "flip" and at < len(value):
                value[at] ^= draw(st.integers(1, 255))
            elif kind == "cut":
                del value[at:]
            else:
                value[at:at] = draw(splices)
        return bytes(value)

    numbers = st.sampled_from([*FIELDS, "schema_version"]).flatmap(
        lambda f: st.sampled_from([HUGE, "-" + HUGE, "1e400", "1e308", "4.0", "-0"]).map(
            lambda raw: with_raw(f, raw)
        )
    )
    return st.one_of(st.binary(max_size=300), mutated(), numbers)


def _outcome(result: ConsumerEvent | InvalidEvent) -> None:
    if isinstance(result, InvalidEvent):
        assert isinstance(result.reason, Reason)
        assert "\n" not in result.message and len(result.message) <= 500


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_mutations(), key=st.one_of(st.none(), st.just(KEY), st.binary(max_size=40)))
def test_arbitrary_bytes_give_an_event_or_invalid_event(value: bytes, key: bytes | None) -> None:
    for decode in (
        lambda: decode_event(value, max_bytes=MAX),
        lambda: admit(key, value, MAX),
    ):
        try:
            result: ConsumerEvent | InvalidEvent = decode()
        except InvalidEvent as exc:
            result = exc
        assert isinstance(result, ConsumerEvent | InvalidEvent)
        _outcome(result)
