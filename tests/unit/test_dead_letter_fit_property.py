"""A fitted dead letter is within its topic's limit whatever the sizes of its key, value
and headers (``service.sinks.fit``), and keeps where the original is; and the size it is
measured by (``letter_size``) is never below the bytes aiokafka really writes.

The issue-21 survivor: a letter cut to fit that still exceeded the limit by the size of
its own truncation headers, which the sink then sent bare (key and value lost)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from service.contract.records import (
    ERROR_HEADERS,
    OWN_HEADERS,
    TRUNCATABLE_PARTS,
    dead_letter_headers,
    original_sizes,
    parse_dead_letter_headers,
    truncation_headers,
)
from service.sinks.fit import (
    FittedLetter,
    _prefix_that_fits,
    fit_letter,
    letter_size,
    split_headers,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ORIGIN = ("consumer-events", "11", "987654321")


def _sized(top: int) -> st.SearchStrategy[bytes | None]:
    """None, or bytes of a size drawn up to ``top`` (one repeated byte: cheap to build)."""
    return st.none() | st.builds(
        lambda n, b: bytes([b]) * n, st.integers(0, top), st.integers(0, 255)
    )


headers_strategy = st.lists(
    st.tuples(
        st.text(alphabet="abcdefghij-._", min_size=1, max_size=40),
        st.builds(lambda n: b"h" * n, st.integers(0, 3000)),
    ),
    max_size=12,
)


def _real_batch_size(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> int:
    """The bytes of the one-record batch aiokafka builds and the broker checks."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=123_456,
        producer_epoch=7,
        base_sequence=99,
        batch_size=2**31 - 1,
    )
    assert builder.append(0, timestamp=1_700_000_000_000, key=key, value=value, headers=headers)
    return len(builder.build())


def _headers(originals: list[tuple[str, bytes]], message: str) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        originals,
        error_class="invalid",
        reason="too_large",
        message=message,
        origin_topic=ORIGIN[0],
        origin_partition=int(ORIGIN[1]),
        origin_offset=int(ORIGIN[2]),
        attempts=1,
        first_failed_at=NOW,
        failed_at=NOW,
    )


def _smallest(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """The smallest a letter can be made: its own headers, every part cut and marked so."""
    originals, own = split_headers(headers)
    marks = truncation_headers(TRUNCATABLE_PARTS, *original_sizes(key, value, originals))
    return letter_size(b"", b"", own + marks)


def _check_fitted(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> None:
    """Every rule of a fitted letter (``service.sinks.fit``), for one letter and limit."""
    fitted = fit_letter(key, value, headers, limit)
    whole = letter_size(key, value, headers)
    # Within the limit, as aiokafka's producer and the broker count it.
    assert letter_size(fitted.key, fitted.value, fitted.headers) <= limit
    assert _real_batch_size(fitted.key, fitted.value, fitted.headers) <= limit
    # Where the original is, and the service's own headers, always kept.
    read = parse_dead_letter_headers(fitted.headers)
    assert (read.origin_topic, read.origin_partition, read.origin_offset) == ORIGIN
    ours = [(n, v) for n, v in headers if n in ERROR_HEADERS]
    assert [(n, v) for n, v in fitted.headers if n in ERROR_HEADERS] == ours
    # Parts are cut to prefixes; a part not cut is as it was (a null stays null).
    assert (fitted.key or b"") == (key or b"")[: len(fitted.key or b"")]
    assert (fitted.value or b"") == (value or b"")[: len(fitted.value or b"")]
    if "value" not in fitted.cut:
        assert fitted.value == value
    if "key" not in fitted.cut:
        assert fitted.key == key
    if whole <= limit:
        assert (fitted.key, fitted.value, fitted.headers, fitted.cut) == (key, value, headers, ())
        return
    assert fitted.cut and set(fitted.cut) <= set(TRUNCATABLE_PARTS)
    named = dict(fitted.headers)  # the marks say what was cut and how big it was
    assert named["origin.truncated"] == ",".join(fitted.cut).encode()
    sizes = original_sizes(key, value, split_headers(headers)[0])
    assert [named[f"origin.{part}_bytes"] for part in ("value", "key", "headers")] == [
        str(size).encode() for size in sizes
    ]
    # Only as far as needed, in order: the value first, then the key, then headers.
    kept_value, kept_key = fitted.value or b"", fitted.key or b""
    if fitted.cut == ("value",) and len(kept_value) < len(value or b""):
        one_more = (value or b"")[: len(kept_value) + 1]
        assert letter_size(fitted.key, one_more, fitted.headers) > limit
    if "key" in fitted.cut and "headers" not in fitted.cut:
        assert kept_value == b""
        if len(kept_key) < len(key or b""):
            one_more = (key or b"")[: len(kept_key) + 1]
            assert letter_size(one_more, fitted.value, fitted.headers) > limit
    if "headers" in fitted.cut:
        _check_headers_cut_only_as_needed(fitted, key, value, headers, limit)


def _check_headers_cut_only_as_needed(
    fitted: FittedLetter,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    limit: int,
) -> None:
    """Original headers go only when the letter did not fit with them all, and each one
    dropped would not have fitted where it stood (they are kept in order while they fit)."""
    originals, own = split_headers(headers)
    sizes = original_sizes(key, value, originals)
    before = [part for part in fitted.cut if part != "headers"]
    without_cutting = originals + own + truncation_headers(before, *sizes)
    assert letter_size(fitted.key, fitted.value, without_cutting) > limit
    marks = truncation_headers(fitted.cut, *sizes)
    kept = [(n, v) for n, v in fitted.headers if n not in OWN_HEADERS]
    position = 0
    so_far: list[tuple[str, bytes]] = []
    for header in originals:
        if position < len(kept) and kept[position] == header:
            so_far.append(header)
            position += 1
            continue
        assert letter_size(fitted.key, fitted.value, [*so_far, header, *own, *marks]) > limit
    assert position == len(kept)


@settings(max_examples=300, deadline=None)
@given(
    key=_sized(5000),
    value=_sized(40_000),
    originals=headers_strategy,
    message=st.text(min_size=1, max_size=600),
    room=st.integers(0, 60_000),
)
def test_a_fitted_letter_is_within_the_limit_and_keeps_its_origin(
    key: bytes | None,
    value: bytes | None,
    originals: list[tuple[str, bytes]],
    message: str,
    room: int,
) -> None:
    headers = _headers(originals, message)
    limit = _smallest(key, value, headers) + room
    assume(limit < letter_size(key, value, headers) + 200)  # mostly letters to cut
    _check_fitted(key, value, headers, limit)


@pytest.mark.parametrize("room", range(12))
@pytest.mark.parametrize(
    ("key", "value"),
    [(b"k" * 300, b"v" * 3000), (b"k" * 300, None), (None, b""), (b"", b"v" * 200)],
    ids=["key-and-value", "key-only", "null-and-empty", "empty-key"],
)
def test_a_letter_fitted_at_the_smallest_limits(
    key: bytes | None, value: bytes | None, room: int
) -> None:
    """The edges random sizes seldom hit: a limit a few bytes above the smallest letter,
    where a prefix of one byte may or may not fit."""
    headers = _headers([("trace", b"t" * 50)], "too large")
    _check_fitted(key, value, headers, _smallest(key, value, headers) + room)


@pytest.mark.parametrize("over", [-1, 0, 1])
def test_a_letter_at_the_limit_is_whole_and_one_byte_over_is_cut(over: int) -> None:
    headers = _headers([("trace", b"t" * 50)], "too large")
    key, value = b"k" * 36, b"v" * 5000
    limit = letter_size(key, value, headers) - over
    fitted = fit_letter(key, value, headers, limit)
    assert (fitted.cut == ()) is (over <= 0)
    _check_fitted(key, value, headers, limit)
    if over == 1:  # one byte over: the value is cut, nothing else
        assert fitted.cut == ("value",) and fitted.key == key
        assert len(fitted.value or b"") < len(value)


@settings(max_examples=200, deadline=None)
@given(key=_sized(3000), value=_sized(70_000), headers=headers_strategy)
def test_letter_size_is_never_below_what_aiokafka_writes(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    """``letter_size`` is aiokafka's estimate of a one-record batch, the very number its
    producer compares with ``max_request_size``; the broker compares the batch it gets
    with ``max.message.bytes``.  So the estimate must bound the real batch, and closely
    (a loose bound would cut letters that fit)."""
    estimate = letter_size(key, value, headers)
    real = _real_batch_size(key, value, headers)
    assert real <= estimate <= real + 32


def test_letter_size_of_a_few_known_letters() -> None:
    """Hand-picked cases, the bytes counted by aiokafka's own batch builder."""
    cases: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (None, None, []),
        (b"k", b"", []),
        (b"k" * 36, b"v" * 1_048_576, [("content-type", b"application/json")]),
        (None, b"v" * 127, [("h" * 200, b"x" * 16_384)] * 3),
    ]
    for key, value, headers in cases:
        real = _real_batch_size(key, value, headers)
        assert real <= letter_size(key, value, headers) <= real + 32


def _zigzag_varint_bytes(n: int) -> int:
    """Bytes of a Kafka (zig-zag) varint for ``n`` >= 0: one below 64, two below 8192."""
    return 1 if n < 64 else 2 if n < 8192 else 3


@settings(max_examples=300, deadline=None)
@given(length=st.integers(0, 300), base=st.integers(0, 100), room=st.integers(-5, 320))
@example(length=10, base=0, room=1)  # room for exactly one byte
@example(length=10, base=63, room=1)  # the first byte crosses 64: it costs two
@example(length=10, base=62, room=2)  # the second byte does
def test_the_prefix_kept_is_the_longest_that_fits(length: int, base: int, room: int) -> None:
    """``_prefix_that_fits`` over a size that grows by a length prefix's varint as well
    as by each byte, as a record's does (a byte more costs two where the length crosses
    64): the longest prefix within the limit, found by trying every length."""
    data = bytes(range(256)) * 2

    def size_of(prefix: bytes) -> int:
        length = base + len(prefix)
        return length + _zigzag_varint_bytes(length)

    limit = size_of(b"") + room
    fitting = [n for n in range(length + 1) if size_of(data[:n]) <= limit]
    expected = data[: max(fitting)] if fitting else b""
    assert _prefix_that_fits(data[:length], size_of, limit) == expected


def test_original_headers_are_kept_in_order_while_they_fit_to_the_byte() -> None:
    """The value and the key gone, the original headers are kept in order as long as
    the letter stays within the limit, the last one kept to the very byte."""
    small, big, last = ("a", b"1" * 100), ("b", b"2" * 5000), ("c", b"3" * 10)
    key, value = b"k" * 10, b"v" * 10
    headers = _headers([small, big, last], "too large")
    _, own = split_headers(headers)
    sizes = original_sizes(key, value, [small, big, last])
    marks = truncation_headers(TRUNCATABLE_PARTS, *sizes)
    limit = letter_size(b"", b"", [small, last, *own, *marks])
    fitted = fit_letter(key, value, headers, limit)
    assert fitted.cut == TRUNCATABLE_PARTS
    assert [(n, v) for n, v in fitted.headers if n not in OWN_HEADERS] == [small, last]
    _check_fitted(key, value, headers, limit)
