"""Cutting a dead letter to fit its topic (service/sinks/fit.py), without a broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.contract.records import (
    ERROR_HEADERS,
    TRUNCATION_HEADERS,
    dead_letter_headers,
    parse_dead_letter_headers,
)
from service.sinks.fit import bare_letter, fit_letter, letter_size

LIMIT = 64 * 1024
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY = b"00000000-0000-4000-8000-000000000001"


def _headers(originals: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        originals,
        error_class="invalid",
        reason="too_large",
        message="value larger than allowed",
        origin_topic="events",
        origin_partition=3,
        origin_offset=1207,
        attempts=1,
        first_failed_at=NOW,
        failed_at=NOW,
    )


def _named(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    return {name: value.decode() for name, value in headers}


def _own_kept(fitted_headers: list[tuple[str, bytes]], original: list[tuple[str, bytes]]) -> None:
    ours = [(n, v) for n, v in original if n in ERROR_HEADERS]
    assert [(n, v) for n, v in fitted_headers if n in ERROR_HEADERS] == ours


def test_a_letter_that_fits_is_untouched() -> None:
    headers = _headers([("content-type", b"x")])
    fitted = fit_letter(KEY, b"v" * 1000, headers, LIMIT)
    assert (fitted.key, fitted.value, fitted.headers, fitted.cut) == (
        KEY,
        b"v" * 1000,
        headers,
        (),
    )
    assert not set(_named(fitted.headers)) & set(TRUNCATION_HEADERS)


@pytest.mark.parametrize("extra", [1, 500, 10 * LIMIT])
def test_an_oversized_value_is_cut_to_a_prefix_that_fits(extra: int) -> None:
    headers = _headers([("trace", b"t" * 20)])
    value = bytes(range(256)) * ((LIMIT + extra) // 256 + 1)
    assert letter_size(KEY, value, headers) > LIMIT
    fitted = fit_letter(KEY, value, headers, LIMIT)
    assert fitted.cut == ("value",)
    assert letter_size(fitted.key, fitted.value, fitted.headers) <= LIMIT
    assert fitted.value is not None and value.startswith(fitted.value)
    # As long as fits: one byte more would not.
    assert letter_size(fitted.key, value[: len(fitted.value) + 1], fitted.headers) > LIMIT
    assert fitted.key == KEY
    assert ("trace", b"t" * 20) in fitted.headers
    _own_kept(fitted.headers, headers)
    marks = parse_dead_letter_headers(fitted.headers)
    assert marks.origin_truncated == "value"
    assert marks.origin_value_bytes == str(len(value))
    assert marks.origin_key_bytes == str(len(KEY))
    assert marks.origin_headers_bytes == str(len("trace") + 20)
    assert marks.origin_offset == "1207"


def test_an_oversized_key_is_cut_after_the_value() -> None:
    headers = _headers([])
    key = b"k" * (3 * LIMIT)
    value = b"{}" * 100
    fitted = fit_letter(key, value, headers, LIMIT)
    assert fitted.cut == ("value", "key")
    assert fitted.value == b""
    assert fitted.key is not None and key.startswith(fitted.key) and len(fitted.key) > 0
    assert letter_size(fitted.key, fitted.value, fitted.headers) <= LIMIT
    marks = _named(fitted.headers)
    assert marks["origin.truncated"] == "value,key"
    assert marks["origin.key_bytes"] == str(len(key))
    assert marks["origin.value_bytes"] == "200"
    _own_kept(fitted.headers, headers)


def test_oversized_headers_are_dropped_last_and_ours_kept() -> None:
    small = ("small", b"s")
    big = [(f"h{i}", b"x" * (LIMIT // 4)) for i in range(8)]
    headers = _headers([small, *big])
    fitted = fit_letter(KEY, b"value", headers, LIMIT)
    assert fitted.cut == ("value", "key", "headers")
    assert letter_size(fitted.key, fitted.value, fitted.headers) <= LIMIT
    names = [n for n, _ in fitted.headers]
    assert "small" in names
    kept_big = [n for n in names if n.startswith("h")]
    assert 0 < len(kept_big) < len(big)  # kept in order while they fit
    assert kept_big == [f"h{i}" for i in range(len(kept_big))]
    _own_kept(fitted.headers, headers)
    assert _named(fitted.headers)["origin.headers_bytes"] == str(
        len("small") + 1 + sum(len(n) + len(v) for n, v in big)
    )


def test_a_null_value_is_not_reported_as_cut() -> None:
    headers = _headers([("h", b"x" * (2 * LIMIT))])
    fitted = fit_letter(KEY, None, headers, LIMIT)
    assert fitted.value is None
    assert fitted.cut == ("key", "headers")
    assert _named(fitted.headers)["origin.value_bytes"] == "0"
    assert letter_size(fitted.key, fitted.value, fitted.headers) <= LIMIT


def test_the_bare_letter_is_only_our_headers() -> None:
    headers = _headers([("h", b"x" * 100)])
    bare = bare_letter(headers, KEY, b"v" * 10)
    assert bare.key is None and bare.value == b""
    assert bare.cut == ("value", "key", "headers")
    assert {n for n, _ in bare.headers} == (set(_named(headers)) - {"h"}) | set(TRUNCATION_HEADERS)
    marks = parse_dead_letter_headers(bare.headers)
    assert (marks.origin_value_bytes, marks.origin_key_bytes) == ("10", str(len(KEY)))
    # Marks of an earlier fit are replaced, not repeated.
    fitted = fit_letter(KEY, b"v" * (2 * LIMIT), headers, LIMIT)
    again = bare_letter(fitted.headers, KEY, b"v" * (2 * LIMIT))
    assert [n for n, _ in again.headers].count("origin.truncated") == 1


def test_a_limit_below_our_own_headers_leaves_the_bare_letter() -> None:
    headers = _headers([("h", b"x")])
    fitted = fit_letter(KEY, b"v" * 100, headers, 200)
    assert fitted.cut == ("value", "key", "headers")
    assert fitted.value == b"" and fitted.key == b""
    assert letter_size(fitted.key, fitted.value, fitted.headers) > 200  # reported by the caller
    _own_kept(fitted.headers, headers)
