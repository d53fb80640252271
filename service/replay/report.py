"""How a run looks to the operator: a rich progress bar on a terminal, a summary table.

The bar goes to stderr (stdout carries the summary or the ``--json`` document, so it
can be piped); without a terminal the runner logs plain ``replay_progress`` lines
instead.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from service.replay.runner import Mode, ReplayReport

#: A canonical UUID's length: an id column is never narrower (rich would cut it).
UUID_WIDTH = 36


class _RateColumn(ProgressColumn):
    """Events per second (rich's speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "-- ev/s" if speed is None else f"{speed:,.0f} ev/s", style="progress.data.speed"
        )


class RichProgress:
    """The runner's ``Progress`` as a transient rich bar with rate and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None

    def start(self, total: int, description: str) -> None:
        self._task = self._progress.add_task("replay", total=total or None)
        self._progress.start()

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)

    def stop(self) -> None:
        self._progress.stop()


def summary_table(report: ReplayReport) -> Table:
    title = "replay summary" + (" (dry run: nothing was written)" if report.dry_run else "")
    table = Table(title=title, title_justify="left")
    table.add_column("what")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_row("source", "", report.source)
    table.add_row("events read", "", f"{report.read:,}")
    if report.mode in (Mode.REPUBLISH, Mode.REPUBLISH_DRY_RUN):
        verb = "would republish" if report.dry_run else "republished"
        table.add_row(verb, "", f"{report.republished:,}")
    for (kind, reason), count in sorted(
        report.outcomes.items(), key=lambda i: (i[0][0], str(i[0][1]))
    ):
        table.add_row(kind, reason or "", f"{count:,}")
    for reason, count in sorted(report.invalid.items()):
        table.add_row("invalid", reason, f"{count:,}")
    table.add_row("time", "", f"{report.seconds:.2f} s")
    table.add_row("rate", "", f"{report.rate:,.0f} events/s")
    return table


def changes_table(report: ReplayReport, limit: int) -> Table | None:
    """Consumers whose generation would change in a dry run (at most ``limit`` rows)."""
    changed = sorted((u, c) for u, c in report.changes.items() if c.changed)
    if not changed:
        return None
    table = Table(
        title=f"consumers that would change: {len(changed):,}"
        + (f" (first {limit}; --json lists all)" if len(changed) > limit else ""),
        title_justify="left",
    )
    table.add_column("consumer", no_wrap=True, min_width=UUID_WIDTH)  # never cut: copyable
    table.add_column("generation before", justify="right")
    table.add_column("generation after", justify="right")
    table.add_column("tombstone after")
    for uuid, change in changed[:limit]:
        table.add_row(
            uuid,
            "-" if change.before is None else str(change.before),
            "-" if change.after is None else str(change.after),
            "yes" if change.deleted_after else "no",
        )
    return table
