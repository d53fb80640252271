"""What the operator reads after a replay (service.replay.report): the summary's rows
in a fixed order, the dry run's list of consumers that would change, the rate column."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.table import Table

from service.apply.dryrun import GenerationChange
from service.replay.report import (
    UUID_WIDTH,
    RichProgress,
    _RateColumn,
    changes_table,
    summary_table,
)
from service.replay.runner import Mode, ReplayReport


def rows(table: Table) -> list[tuple[Any, ...]]:
    return [tuple(column._cells[i] for column in table.columns) for i in range(table.row_count)]


def report(mode: Mode) -> ReplayReport:
    made = ReplayReport(source="topic events.dlq", mode=mode, read=1234, seconds=2.5)
    made.outcomes.update(
        {
            ("rejected", "generation_conflict"): 3,
            ("applied", None): 1200,
            ("rejected", "consumer_exists"): 2,
            ("duplicate", None): 4,
        }
    )
    made.invalid.update({"too_large": 1, "not_json": 5})
    made.republished = 1001
    return made


def test_the_summary_lists_the_source_counts_time_and_rate() -> None:
    table = summary_table(report(Mode.APPLY))
    assert table.title == "replay summary"
    assert table.title_justify == "left"
    assert [c.header for c in table.columns] == ["what", "reason", "count"]
    assert table.columns[2].justify == "right"
    assert rows(table) == [
        ("source", "", "topic events.dlq"),
        ("events read", "", "1,234"),
        ("applied", "", "1,200"),
        ("duplicate", "", "4"),
        ("rejected", "consumer_exists", "2"),
        ("rejected", "generation_conflict", "3"),
        ("invalid", "not_json", "5"),
        ("invalid", "too_large", "1"),
        ("time", "", "2.50 s"),
        ("rate", "", "494 events/s"),
    ]


def test_a_republish_says_how_many_went_back_and_a_dry_run_says_so() -> None:
    republished = rows(summary_table(report(Mode.REPUBLISH)))
    assert republished[2] == ("republished", "", "1,001")
    dry = summary_table(report(Mode.REPUBLISH_DRY_RUN))
    assert dry.title == "replay summary (dry run: nothing was written)"
    assert rows(dry)[2] == ("would republish", "", "1,001")
    assert summary_table(report(Mode.DRY_RUN)).title == (
        "replay summary (dry run: nothing was written)"
    )
    assert "republished" not in [r[0] for r in rows(summary_table(report(Mode.DRY_RUN)))]


UUIDS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(5)]


def dry_run_changes() -> ReplayReport:
    made = ReplayReport(source="s", mode=Mode.DRY_RUN)
    made.changes = {
        UUIDS[3]: GenerationChange(2, 3, False, True),
        UUIDS[0]: GenerationChange(None, 1, False, False),
        UUIDS[2]: GenerationChange(4, 4, False, False),  # unchanged: not listed
        UUIDS[1]: GenerationChange(5, 5, True, False),  # revived at the same generation
        UUIDS[4]: GenerationChange(6, None, False, False),  # no row after
    }
    return made


def test_the_consumers_that_would_change_in_uuid_order() -> None:
    table = changes_table(dry_run_changes(), 10)
    assert table is not None
    assert table.title == "consumers that would change: 4"
    assert table.title_justify == "left"
    assert [c.header for c in table.columns] == [
        "consumer",
        "generation before",
        "generation after",
        "tombstone after",
    ]
    consumer = table.columns[0]
    assert consumer.no_wrap and consumer.min_width == UUID_WIDTH == 36
    assert [c.justify for c in table.columns[1:3]] == ["right", "right"]
    assert rows(table) == [
        (UUIDS[0], "-", "1", "no"),
        (UUIDS[1], "5", "5", "no"),
        (UUIDS[3], "2", "3", "yes"),
        (UUIDS[4], "6", "-", "no"),
    ]


def test_the_list_is_cut_at_the_limit_and_says_so() -> None:
    table = changes_table(dry_run_changes(), 2)
    assert table is not None
    assert table.title == "consumers that would change: 4 (first 2; --json lists all)"
    assert [r[0] for r in rows(table)] == [UUIDS[0], UUIDS[1]]
    exact = changes_table(dry_run_changes(), 4)
    assert exact is not None and exact.title == "consumers that would change: 4"


def test_no_change_no_list() -> None:
    made = ReplayReport(source="s", mode=Mode.DRY_RUN)
    assert changes_table(made, 10) is None
    made.changes = {UUIDS[0]: GenerationChange(1, 1, True, True)}
    assert changes_table(made, 10) is None
    made.changes[UUIDS[1]] = GenerationChange(None, None, False, False)
    assert changes_table(made, 10) is None


def test_the_rate_column_speaks_events() -> None:
    column = _RateColumn()
    assert str(column.render(SimpleNamespace(finished_speed=None, speed=None))) == "-- ev/s"
    assert str(column.render(SimpleNamespace(finished_speed=None, speed=12_345.6))) == (
        "12,346 ev/s"
    )
    finished = column.render(SimpleNamespace(finished_speed=50.0, speed=12_345.6))
    assert str(finished) == "50 ev/s"
    assert finished.style == "progress.data.speed"


def test_the_bar_counts_what_it_is_told() -> None:
    bar = RichProgress(Console(file=io.StringIO(), width=120, force_terminal=True))
    bar.advance(5)  # before start: nothing to advance
    bar.start(200, "topic")
    bar.advance(50)
    bar.advance(20)
    [task] = bar._progress.tasks
    assert (task.total, task.completed, task.description) == (200, 70, "replay")
    bar.stop()
    unknown = RichProgress(Console(file=io.StringIO(), width=120, force_terminal=True))
    unknown.start(0, "archive")
    assert unknown._progress.tasks[0].total is None  # no total: no ETA to guess
    unknown.stop()


def test_the_bar_says_what_it_counts_in_words() -> None:
    out = io.StringIO()
    bar = RichProgress(Console(file=out, width=120, force_terminal=True, color_system=None))
    bar.start(200, "topic")
    bar.advance(70)
    bar._progress.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", " ", out.getvalue())  # without the escapes
    bar.stop()
    assert re.search(r"\breplay\b", text) and re.search(r"\beta\b", text), text
    assert "70/200" in text and " ev/s" in text
    assert "━" in text  # the bar
    assert re.search(r"ev/s +0:00:\d\d +eta +(-:--:--|\d+:\d\d:\d\d)", text), text
