"""A fitted dead letter is within its topic's limit whatever the sizes of its key, value
and headers (``service.sinks.fit``), and keeps where the original is; and the size it is
measured by (``letter_size``) is never below the bytes aiokafka really writes.

The issue-21 survivor: a letter cut to fit that still exceeded the limit by the size of
its own truncation headers, which the sink then sent bare (key and value lost)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.contract.records import (
    ERROR_HEADERS,
    TRUNCATABLE_PARTS,
    dead_letter_headers,
    original_sizes,
    parse_dead_letter_headers,
    truncation_headers,
)
from service.sinks.fit import fit_letter, letter_size, split_headers

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
    headers = dead_letter_headers(
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
    # The smallest a letter can be made: its own headers, every part cut and marked so.
    originals_kept, own = split_headers(headers)
    marks = truncation_headers(TRUNCATABLE_PARTS, *original_sizes(key, value, originals_kept))
    smallest = letter_size(b"", b"", own + marks)
    limit = smallest + room
    whole = letter_size(key, value, headers)
    assume(limit < whole + 200)  # mostly letters that need cutting, some that fit

    fitted = fit_letter(key, value, headers, limit)

    assert letter_size(fitted.key, fitted.value, fitted.headers) <= limit
    assert _real_batch_size(fitted.key, fitted.value, fitted.headers) <= limit
    read = parse_dead_letter_headers(fitted.headers)
    assert (read.origin_topic, read.origin_partition, read.origin_offset) == ORIGIN
    ours = [(n, v) for n, v in headers if n in ERROR_HEADERS]
    assert [(n, v) for n, v in fitted.headers if n in ERROR_HEADERS] == ours
    assert (fitted.key or b"") == (key or b"")[: len(fitted.key or b"")]
    assert (fitted.value or b"") == (value or b"")[: len(fitted.value or b"")]
    if whole <= limit:
        assert (fitted.key, fitted.value, fitted.headers, fitted.cut) == (key, value, headers, ())
    else:
        assert fitted.cut and set(fitted.cut) <= set(TRUNCATABLE_PARTS)
        named = dict(fitted.headers)  # the marks say what was cut and how big it was
        assert named["origin.truncated"] == ",".join(fitted.cut).encode()
        sizes = original_sizes(key, value, originals_kept)
        assert [named[f"origin.{part}_bytes"] for part in ("value", "key", "headers")] == [
            str(size).encode() for size in sizes
        ]


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
