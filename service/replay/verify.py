"""Prove that the database matches the log: rebuild the expected state and diff it.

The expected state is rebuilt by replaying the events topic (and/or archive files) in
per-partition offset order into a *scratch* database (a temporary SQLite file unless
another URL is given) through the same ``Applier`` the daemon uses, under the current
settings.  Then both ``consumers`` tables are read in UUID order, as streams, and
merged: a consumer only in the rebuild is *missing*, only in the live database
*extra*, in both with another generation, owner, type, tombstone state or last event
*different* (every field of the state but the write times: ``FIELDS``).

Pruning (``consumergen db prune``) is part of normal operation and is treated so:

* a pruned *tombstone* is a consumer that the rebuild has as deleted and the live
  database does not have at all: reported as ``pruned_tombstone``, counted, and not a
  difference (``strict`` makes it one);
* pruned *inbox rows* do not change the consumers table, so the diff does not see
  them; the inbox cross-check (live applied rows per consumer against its generation)
  counts "fewer applied rows than the generation" as pruned, and reports "more" as a
  difference: that is a change applied twice.

The rebuild is only as complete as its input: a topic whose retention dropped early
events must be completed with an archive of them, or every consumer they touched
shows up as different.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.domain.consumer import ConsumerState
from service.replay.runner import Mode, Progress, ReplayReport, replay
from service.replay.sources import Source, SourceError
from service.store import reads
from service.store.engine import create_engine
from service.store.migrate import upgrade_engine

#: What ``verify`` does not compare of a consumer's state: its key, and the times the
#: store stamps when it writes (a rebuild writes later than the live database did).
NOT_COMPARED: Final = frozenset({"uuid", "created_at", "updated_at", "deleted_at"})
#: Every other field of ``ConsumerState``: a field added to it is compared unless it is
#: named above (``tests/replay/test_verify_fields.py`` holds the two lists together).
FIELDS: Final = tuple(f.name for f in fields(ConsumerState) if f.name not in NOT_COMPARED)
_GENERATION: Final = FIELDS.index("generation")
_DELETED: Final = FIELDS.index("deleted")
#: A consumer's compared fields, in ``FIELDS`` order.
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    """One consumer that does not match; ``fields`` maps a field to (expected, live)."""

    uuid: str
    kind: str  # missing | extra | different | pruned_tombstone | inbox
    fields: dict[str, tuple[Any, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "consumer_uuid": self.uuid,
            "kind": self.kind,
            "fields": {
                name: {"expected": expected, "live": live}
                for name, (expected, live) in self.fields.items()
            },
        }


@dataclass
class VerifyReport:
    rebuild: ReplayReport
    compared: int = 0
    differences: list[Difference] = field(default_factory=list)
    pruned_tombstones: int = 0
    inbox_pruned: int = 0
    strict: bool = False

    @property
    def problems(self) -> list[Difference]:
        return [d for d in self.differences if d.kind != "pruned_tombstone" or self.strict]

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for d in self.differences:
            counts[d.kind] = counts.get(d.kind, 0) + 1
        return {
            "clean": self.clean,
            "consumers_compared": self.compared,
            "counts": counts,
            "pruned_tombstones": self.pruned_tombstones,
            "consumers_with_pruned_inbox_rows": self.inbox_pruned,
            "differences": [d.to_json() for d in self.differences],
            "rebuild": self.rebuild.to_json(),
        }


async def _stream(engine: AsyncEngine) -> AsyncGenerator[tuple[str, Row], None]:
    async for c in reads.consumers_by_uuid(engine):
        yield c.uuid, tuple(getattr(c, name) for name in FIELDS)


_END: tuple[str, Row] = ("\uffff", ())


async def diff(expected: AsyncEngine, live: AsyncEngine, report: VerifyReport) -> None:
    """Merge the two UUID-ordered streams into ``report.differences``."""
    left, right = _stream(expected), _stream(live)
    try:
        await _merge(left, right, report)
    finally:
        await left.aclose()
        await right.aclose()


async def _next(rows: AsyncIterator[tuple[str, Row]]) -> tuple[str, Row]:
    try:
        return await rows.__anext__()
    except StopAsyncIteration:
        return _END


async def _merge(
    left: AsyncIterator[tuple[str, Row]],
    right: AsyncIterator[tuple[str, Row]],
    report: VerifyReport,
) -> None:
    a = await _next(left)
    b = await _next(right)
    while a is not _END or b is not _END:
        if b is _END or (a is not _END and a[0] < b[0]):
            if a[1][_DELETED]:
                report.pruned_tombstones += 1
                report.differences.append(Difference(a[0], "pruned_tombstone", {}))
            else:
                report.differences.append(Difference(a[0], "missing", _all(a[1], None)))
            report.compared += 1
            a = await _next(left)
        elif a is _END or b[0] < a[0]:
            report.differences.append(Difference(b[0], "extra", _all(None, b[1])))
            report.compared += 1
            b = await _next(right)
        else:
            changed = {
                name: (x, y) for name, x, y in zip(FIELDS, a[1], b[1], strict=True) if x != y
            }
            if changed:
                report.differences.append(Difference(a[0], "different", changed))
            report.compared += 1
            a = await _next(left)
            b = await _next(right)


def _all(expected: Row | None, live: Row | None) -> dict[str, tuple[Any, Any]]:
    return {
        name: (None if expected is None else expected[i], None if live is None else live[i])
        for i, name in enumerate(FIELDS)
    }


async def check_inbox(live: AsyncEngine, report: VerifyReport) -> None:
    """Applied inbox rows per consumer against its generation (see the module doc)."""
    counts = await reads.applied_counts(live)
    async for uuid, row in _stream(live):
        applied = counts.get(uuid, 0)
        generation = row[_GENERATION]
        if applied > generation:
            report.differences.append(
                Difference(uuid, "inbox", {"applied_inbox_rows": (generation, applied)})
            )
        elif applied < generation:
            report.inbox_pruned += 1


async def _require_empty(engine: AsyncEngine) -> None:
    if await reads.has_consumers(engine):
        raise SourceError("the scratch database is not empty: give verify an empty one")


async def verify(
    sources: list[Source],
    *,
    settings: Settings,
    live: AsyncEngine,
    scratch_url: str | None = None,
    strict: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Rebuild from ``sources`` (in that order) into a scratch database and diff."""
    with tempfile.TemporaryDirectory(prefix="consumergen-verify-") as folder:
        url = scratch_url or f"sqlite+aiosqlite:///{Path(folder) / 'expected.sqlite3'}"
        scratch_settings = settings.model_copy(update={"database_url": url})
        scratch = create_engine(scratch_settings)
        try:
            await upgrade_engine(scratch)
            await _require_empty(scratch)
            rebuild = ReplayReport(source=", ".join(s.describe() for s in sources), mode=Mode.APPLY)
            for source in sources:
                part = await replay(
                    source,
                    settings=scratch_settings,
                    mode=Mode.APPLY,
                    engine=scratch,
                    progress=progress,
                )
                rebuild.read += part.read
                rebuild.outcomes.update(part.outcomes)
                rebuild.invalid.update(part.invalid)
                rebuild.seconds += part.seconds
            report = VerifyReport(rebuild=rebuild, strict=strict)
            await diff(scratch, live, report)
            await check_inbox(live, report)
        finally:
            await scratch.dispose()
    return report
