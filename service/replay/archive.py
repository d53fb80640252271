"""Dump a topic range to a JSONL archive (the format ``service.replay.records`` defines).

The file is written next to its destination under a temporary name and renamed into
place only when the whole range was read, so an interrupted archive never leaves a
truncated file that looks complete.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from service.replay.records import to_archive_line
from service.replay.runner import Progress
from service.replay.sources import TopicSource

log = structlog.stdlib.get_logger(__name__)


@dataclass
class ArchiveReport:
    records: int = 0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0


async def write_archive(
    source: TopicSource, destination: Path | None, progress: Progress
) -> ArchiveReport:
    """Write every record of the opened ``source`` to ``destination`` (None: stdout)."""
    report = ArchiveReport()
    started = time.monotonic()
    if destination is None:
        handle = sys.stdout
        temporary: Path | None = None
    else:
        fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
        temporary = Path(name)
        handle = os.fdopen(fd, "w", encoding="utf-8")
    progress.start(source.total, source.describe())
    try:
        async for chunk in source.batches():
            for record in chunk:
                handle.write(to_archive_line(record))
                handle.write("\n")
                first, _ = report.partitions.get(record.partition, (record.offset, 0))
                report.partitions[record.partition] = (first, record.offset)
            report.records += len(chunk)
            progress.advance(len(chunk))
        handle.flush()
        if temporary is not None:
            os.fsync(handle.fileno())
            handle.close()
            assert destination is not None
            temporary.replace(destination)
            temporary = None
    finally:
        progress.stop()
        if temporary is not None:
            handle.close()
            temporary.unlink(missing_ok=True)
    report.seconds = time.monotonic() - started
    log.info("archive_written", records=report.records, seconds=round(report.seconds, 3))
    return report
