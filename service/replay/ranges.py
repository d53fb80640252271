"""Which records to read: the range options of `replay` and `archive`, parsed and checked.

Everything here is validated before any broker or database work starts, so a bad
argument is a one-line usage error and nothing is read or written.  A range is stated
in the operator's terms (partitions, offsets, timestamps) and resolved to concrete
``[start, end)`` offsets per partition once the topic's metadata is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.domain.errors import InvalidInput


class RangeError(InvalidInput, ValueError):
    """The range cannot be read as asked (the message names the option)."""


def parse_partition_offset(text: str, option: str) -> tuple[int, int]:
    """``P:O`` -> (partition, offset), both non-negative integers."""
    partition, sep, offset = text.partition(":")
    try:
        if not sep:
            raise ValueError
        p, o = int(partition), int(offset)
    except ValueError:
        raise RangeError(
            f"{option}: expected PARTITION:OFFSET, e.g. 0:1200, not {text!r}"
        ) from None
    if p < 0 or o < 0:
        raise RangeError(f"{option}: partition and offset must be >= 0 in {text!r}")
    return p, o


def parse_timestamp(text: str, option: str) -> int:
    """An RFC 3339 / ISO 8601 time (naive means UTC) -> Kafka milliseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RangeError(
            f"{option}: expected an ISO 8601 time, e.g. 2024-05-01T12:00:00Z, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _per_partition(pairs: Iterable[tuple[int, int]], option: str) -> dict[int, int]:
    result: dict[int, int] = {}
    for partition, offset in pairs:
        if partition in result and result[partition] != offset:
            raise RangeError(f"{option}: partition {partition} given twice")
        result[partition] = offset
    return result


@dataclass(frozen=True)
class RangeSpec:
    """The operator's range, before the topic is known.

    ``from_offsets``/``to_offsets`` map partition -> offset; ``to_offsets`` are inclusive
    (the last offset read).  Timestamps are Kafka milliseconds: ``from_timestamp`` starts
    at the first record at or after it, ``to_timestamp`` stops before the first record at
    or after it.  ``partitions`` restricts the partitions read (empty: see ``chosen``).
    """

    from_beginning: bool = False
    from_offsets: Mapping[int, int] = field(default_factory=dict)
    from_timestamp: int | None = None
    to_offsets: Mapping[int, int] = field(default_factory=dict)
    to_timestamp: int | None = None
    partitions: frozenset[int] = frozenset()

    @classmethod
    def from_options(
        cls,
        *,
        from_beginning: bool = False,
        from_offset: Iterable[str] = (),
        from_timestamp: str | None = None,
        to_offset: Iterable[str] = (),
        to_timestamp: str | None = None,
        partitions: Iterable[int] = (),
        require_start: bool = True,
    ) -> RangeSpec:
        """Parse and cross-check the CLI options (``RangeError`` names the problem)."""
        starts = sum((from_beginning, bool(tuple(from_offset)), from_timestamp is not None))
        if starts > 1:
            raise RangeError(
                "choose one start: --from-beginning, --from-offset or --from-timestamp"
            )
        if starts == 0 and require_start:
            raise RangeError(
                "say where to start: --from-beginning, --from-offset P:O or --from-timestamp T"
            )
        spec = cls(
            from_beginning=from_beginning or starts == 0,
            from_offsets=_per_partition(
                (parse_partition_offset(t, "--from-offset") for t in from_offset), "--from-offset"
            ),
            from_timestamp=(
                None
                if from_timestamp is None
                else parse_timestamp(from_timestamp, "--from-timestamp")
            ),
            to_offsets=_per_partition(
                (parse_partition_offset(t, "--to-offset") for t in to_offset), "--to-offset"
            ),
            to_timestamp=(
                None if to_timestamp is None else parse_timestamp(to_timestamp, "--to-timestamp")
            ),
            partitions=frozenset(partitions),
        )
        spec._check_order()
        return spec

    def _check_order(self) -> None:
        if any(p < 0 for p in self.partitions):
            raise RangeError("--partition must be >= 0")
        for partition, start in self.from_offsets.items():
            end = self.to_offsets.get(partition)
            if end is not None and start > end:
                raise RangeError(
                    f"inverted range on partition {partition}: --from-offset {start} is after "
                    f"--to-offset {end}"
                )
        if (
            self.from_timestamp is not None
            and self.to_timestamp is not None
            and self.from_timestamp >= self.to_timestamp
        ):
            raise RangeError("inverted range: --from-timestamp is not before --to-timestamp")
        if self.partitions:
            named = set(self.from_offsets) | set(self.to_offsets)
            outside = sorted(named - self.partitions)
            if outside:
                raise RangeError(
                    f"partition {outside[0]} has an offset option but is not in --partition"
                )

    def chosen(self, existing: Iterable[int]) -> list[int]:
        """The partitions to read: ``--partition`` values; else the partitions named by
        ``--from-offset``/``--to-offset``; else all.  Unknown ones are a ``RangeError``."""
        known = sorted(set(existing))
        wanted = set(self.partitions) or set(self.from_offsets) | set(self.to_offsets)
        unknown = sorted(wanted - set(known))
        if unknown:
            raise RangeError(
                f"unknown partition {unknown[0]}: the topic has partitions "
                f"{_describe_partitions(known)}"
            )
        return sorted(wanted) if wanted else known

    def accepts(self, partition: int, offset: int, timestamp_ms: int | None) -> bool:
        """Whether a record read from an archive file falls inside the range (a topic
        is seeked instead; this is the same rule applied record by record)."""
        wanted = set(self.partitions) or set(self.from_offsets) | set(self.to_offsets)
        if wanted and partition not in wanted:
            return False
        if offset < self.from_offsets.get(partition, 0):
            return False
        last = self.to_offsets.get(partition)
        if last is not None and offset > last:
            return False
        if timestamp_ms is not None:
            if self.from_timestamp is not None and timestamp_ms < self.from_timestamp:
                return False
            if self.to_timestamp is not None and timestamp_ms >= self.to_timestamp:
                return False
        return True

    @property
    def uses_timestamps(self) -> bool:
        return self.from_timestamp is not None or self.to_timestamp is not None


def _describe_partitions(known: list[int]) -> str:
    if not known:
        return "none"
    if known == list(range(known[0], known[-1] + 1)) and len(known) > 2:
        return f"{known[0]}-{known[-1]}"
    return ", ".join(str(p) for p in known)


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition, resolved against the broker."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)
