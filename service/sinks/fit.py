"""A dead letter always fits its topic (``../shared/DESIGN.md``, *Failure classes*): the
Kafka dead-letter sink (``service.sinks.kafka``) cuts what would not.

A dead letter repeats the original key, value and headers and adds the service's own
error headers, so it is bigger than the record it reports; and the record may have been
bigger than the dead-letter topic allows in the first place (a compressed batch the
consumer decompressed, an events topic that allows more than the dead-letter topic).
The broker would refuse such a letter for ever.  So a letter over the limit is cut:
the value first, then the key, then the original headers (the service's own headers are
always kept), each part only as far as needed, and headers say what was cut and how big
the original parts were; ``origin.topic/partition/offset`` say where the original is.

Sizes are aiokafka's own upper-bound estimate of a record batch holding the one record
(``DefaultRecordBatchBuilder.estimate_size_in_bytes``), the very number its producer
checks against ``max_request_size``; the broker checks the batch against the topic's
``max.message.bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from service.contract.records import (
    OWN_HEADERS,
    TRUNCATION_HEADERS,
    original_sizes,
    truncation_headers,
)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class FittedLetter:
    """What is written to the dead-letter topic for one record."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    #: The parts cut, in the order they were cut ("value", "key", "headers"); empty: whole.
    cut: tuple[str, ...]


def letter_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """Upper bound of the bytes of a batch holding only this record (aiokafka's estimate)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


def split_headers(headers: Sequence[tuple[str, bytes]]) -> tuple[Headers, Headers]:
    """(the original headers, the service's own) of a dead letter's header list."""
    originals = [(n, v) for n, v in headers if n not in OWN_HEADERS]
    own = [(n, v) for n, v in headers if n in OWN_HEADERS]
    return originals, own


def fit_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    limit: int,
) -> FittedLetter:
    """The letter itself when it fits ``limit`` bytes, else the letter with parts cut.

    When even the service's own headers alone exceed ``limit`` (a topic configured
    absurdly small) the result is the bare letter, which still does not fit: the
    dead-letter sink then reports it (it cannot be written) instead of retrying it.
    """
    if letter_size(key, value, headers) <= limit:
        return FittedLetter(key, value, list(headers), ())
    originals, own = split_headers(headers)
    sizes = original_sizes(key, value, originals)
    cut: list[str] = []

    def marks() -> Headers:
        return truncation_headers(cut, *sizes)

    # 1. The value, then 2. the key: a prefix of each, as long as still fits.
    new_value = value
    if value:
        cut.append("value")
        rest = originals + own + marks()
        new_value = _prefix_that_fits(value, lambda b: letter_size(key, b, rest), limit)
        if letter_size(key, new_value, rest) <= limit:
            return FittedLetter(key, new_value, rest, tuple(cut))
    new_key = key
    if key:
        cut.append("key")
        rest = originals + own + marks()
        new_key = _prefix_that_fits(key, lambda b: letter_size(b, new_value, rest), limit)
        if letter_size(new_key, new_value, rest) <= limit:
            return FittedLetter(new_key, new_value, rest, tuple(cut))

    # 3. The original headers: keep them in order while they fit.
    if originals:
        cut.append("headers")
        kept_headers: Headers = []
        for header in originals:
            if letter_size(new_key, new_value, [*kept_headers, header, *own, *marks()]) <= limit:
                kept_headers.append(header)
        originals = kept_headers
    return FittedLetter(new_key, new_value, originals + own + marks(), tuple(cut))


def bare_letter(
    headers: Sequence[tuple[str, bytes]], key: bytes | None, value: bytes | None
) -> FittedLetter:
    """Only the service's own headers (and the marks saying everything was cut): what is
    sent when the broker refused a fitted letter as too large all the same."""
    originals, own = split_headers(headers)
    own = [(n, v) for n, v in own if n not in TRUNCATION_HEADERS]
    sizes = original_sizes(key, value, originals)
    cut = [name for name, present in (("value", value), ("key", key)) if present]
    if originals:
        cut.append("headers")
    return FittedLetter(None, b"", own + truncation_headers(cut, *sizes), tuple(cut))


def _prefix_that_fits(data: bytes, size_of: Callable[[bytes], int], limit: int) -> bytes:
    """The longest prefix of ``data`` for which ``size_of(prefix) <= limit`` (b"" if none).

    ``size_of`` is linear in the prefix's length but for its varint length prefix (at
    most a few bytes), so one estimate and a short correction suffice."""
    empty = int(size_of(b""))
    room = limit - empty
    if room <= 0:
        return b""
    length = min(len(data), room)
    while length > 0 and int(size_of(data[:length])) > limit:
        length -= max(1, int(size_of(data[:length])) - limit)
    return data[: max(0, length)]
