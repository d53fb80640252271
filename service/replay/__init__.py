"""The operator's tools: replay, archive and verify (see docs/operations.md).

Sources (``sources``) hand out records of a topic range or an archive file; the runner
(``runner``) drives them through the daemon's apply path (or ``service.apply.dryrun``'s dry run);
``archive`` writes the JSONL format ``records`` defines; ``verify`` rebuilds the
expected state in a scratch database and diffs it against the live one.
"""

from service.replay.archive import ArchiveReport, write_archive
from service.replay.ranges import PartitionRange, RangeError, RangeSpec
from service.replay.records import (
    ArchiveLineError,
    SourceRecord,
    from_archive_line,
    to_archive_line,
)
from service.replay.runner import Mode, ReplayReport, replay
from service.replay.sources import ArchiveSource, Source, SourceError, TopicSource
from service.replay.verify import Difference, VerifyReport, verify

__all__ = [
    "ArchiveLineError",
    "ArchiveReport",
    "ArchiveSource",
    "Difference",
    "Mode",
    "PartitionRange",
    "RangeError",
    "RangeSpec",
    "ReplayReport",
    "Source",
    "SourceError",
    "SourceRecord",
    "TopicSource",
    "VerifyReport",
    "from_archive_line",
    "replay",
    "to_archive_line",
    "verify",
    "write_archive",
]
