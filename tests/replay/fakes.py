"""Pieces of the operator tools' fast tests: a source of records given by hand, records
of events, and a progress display that writes down what it was told."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from service.replay.records import SourceRecord
from service.testing.model import event_doc


def consumer_id(n: int) -> str:
    """A fixed consumer UUID per number (stable order: ``consumer_id(1) < consumer_id(2)``)."""
    return f"00000000-0000-4000-8000-{n:012d}"


def record(
    offset: int,
    doc: dict[str, Any] | None = None,
    *,
    value: bytes | None = None,
    key: bytes | str | None = "consumer",
    topic: str = "events",
    partition: int = 0,
    headers: tuple[tuple[str, bytes], ...] = (),
    undecodable: str | None = None,
    timestamp_ms: int | None = None,
) -> SourceRecord:
    """A record of ``doc`` (its consumer as the key, unless ``key`` says otherwise)."""
    if value is None and doc is not None:
        value = json.dumps(doc).encode()
    if key == "consumer":
        key = doc["consumer_uuid"].encode() if doc is not None else None
    assert not isinstance(key, str)
    return SourceRecord(
        topic, partition, offset, timestamp_ms, key, value, headers, undecodable=undecodable
    )


def upsert_doc(consumer: str, **fields: Any) -> dict[str, Any]:
    doc = event_doc(consumer, project="p", user="u", consumer_type="T")
    doc.update(fields)
    return doc


def delete_doc(consumer: str) -> dict[str, Any]:
    return event_doc(consumer, delete=True)


@dataclass
class ListSource:
    """A ``Source`` over chunks given by hand."""

    chunks: list[list[SourceRecord]]
    name: str = "hand-made records"
    #: Raised after the chunks, when set (a source that breaks part-way).
    fail_after: BaseException | None = None

    @property
    def total(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    def describe(self) -> str:
        return self.name

    async def batches(self) -> AsyncIterator[list[SourceRecord]]:
        for chunk in self.chunks:
            yield chunk
        if self.fail_after is not None:
            raise self.fail_after


@dataclass
class RecordingProgress:
    """A ``Progress`` that writes down its calls."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def start(self, total: int, description: str) -> None:
        self.calls.append(("start", total, description))

    def advance(self, count: int) -> None:
        self.calls.append(("advance", count))

    def stop(self) -> None:
        self.calls.append(("stop",))
