# ruff: noqa: E501  (the expected tables are as wide as show prints them off a terminal)
"""What `consumergen show` prints for every kind of row, field by field: a tombstoned
consumer without a consumer type, an inbox row without type, source or generation (a
failed event) beside a full one, in text and ``--json``; a consumer not found with and
without inbox rows left; a consumer with none (``show``'s own rendering, over rows built
here; ``test_cli_show_topics.py`` reads a real database)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from service.cli import show
from service.domain.consumer import ConsumerState
from service.domain.events import EventType
from service.domain.inbox import ProcessedEvent
from service.domain.outcomes import EventSource, OutcomeKind, Reason

C1 = "00000000-0000-4000-8000-0000000000c1"
E1 = "00000000-0000-4000-8000-0000000000e1"
E2 = "00000000-0000-4000-8000-0000000000e2"


def at(hour: int) -> datetime:
    return datetime(2026, 1, 2, hour, 4, 5, tzinfo=UTC)


TOMBSTONE = ConsumerState(C1, 3, True, "p", "u", None, E1, at(1), at(2), at(3))
FAILED = ProcessedEvent(
    E2, C1, "h", OutcomeKind.FAILED, Reason.CONSUMER_EXISTS, None, None, 2, None, at(4)
)
APPLIED = ProcessedEvent(
    E1,
    C1,
    "h",
    OutcomeKind.APPLIED,
    None,
    3,
    EventType.DELETE,
    1,
    EventSource("events", 2, 17),
    at(3),
)

TEXT = f"""\
consumer {C1}
┌───────────────┬────────────────────────────────────────────────┐
│ state         │ deleted (tombstone since 2026-01-02T03:04:05Z) │
│ generation    │ 3                                              │
│ project       │ p                                              │
│ user          │ u                                              │
│ consumer type │ -                                              │
│ last event    │ {E1}           │
│ created       │ 2026-01-02T01:04:05Z                           │
│ updated       │ 2026-01-02T02:04:05Z                           │
└───────────────┴────────────────────────────────────────────────┘
last 2 processed events, newest first
┏━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━┓
┃ processed at         ┃ event                                ┃ type            ┃ outcome                  ┃ generation after ┃ source      ┃
┡━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━┩
│ 2026-01-02T04:04:05Z │ {E2} │ -               │ failed (consumer_exists) │ -                │ -           │
│ 2026-01-02T03:04:05Z │ {E1} │ consumer.delete │ applied                  │ 3                │ events/2@17 │
└──────────────────────┴──────────────────────────────────────┴─────────────────┴──────────────────────────┴──────────────────┴─────────────┘
"""


def printed(capsys: pytest.CaptureFixture[str], found: show._Found) -> tuple[str, str]:
    show._print(C1, found)
    out, err = capsys.readouterr()
    return "".join(line.rstrip() + "\n" for line in out.splitlines()), err


def test_a_tombstone_and_its_inbox_rows_as_tables(capsys: pytest.CaptureFixture[str]) -> None:
    show._print(C1, show._Found(TOMBSTONE, [FAILED, APPLIED]))
    raw, err = capsys.readouterr()
    assert "".join(line.rstrip() + "\n" for line in raw.splitlines()) == TEXT
    assert err == ""
    # The titles are left-justified over their tables: padded to the table's width.
    lines = raw.splitlines()
    assert lines[0] == f"consumer {C1}".ljust(len(lines[1]))
    assert lines[11] == "last 2 processed events, newest first".ljust(len(lines[12]))


def narrow(monkeypatch: pytest.MonkeyPatch, width: int, found: show._Found) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, highlight=False)
    monkeypatch.setattr(show, "stdout_console", lambda: console)
    show._print(C1, found)
    return out.getvalue().splitlines()


def test_on_a_narrow_terminal_the_field_names_stay_whole_and_values_fold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = narrow(monkeypatch, 44, show._Found(TOMBSTONE, []))
    rows = [line.split("│")[1:3] for line in lines if line.startswith("│")]
    names = [name.strip() for name, _ in rows]
    assert names == [
        "state",
        "",
        "generation",
        "project",
        "user",
        "consumer type",
        "last event",
        "",
        "created",
        "updated",
    ]
    values = [value.strip() for _, value in rows]
    assert values[6] + values[7] == E1  # folded, never cut short
    assert values[0] + " " + values[1] == "deleted (tombstone since 2026-01-02T03:04:05Z)"
    assert all("…" not in line and len(line) <= 44 for line in lines)
    # Narrower still, the values give way and the field names keep their line.
    narrower = narrow(monkeypatch, 30, show._Found(TOMBSTONE, []))
    assert "│ consumer type │ -          │" in narrower
    assert all(len(line) <= 30 for line in narrower)


def test_on_a_narrow_terminal_the_event_columns_fold_and_the_id_stays_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = narrow(monkeypatch, 60, show._Found(TOMBSTONE, [FAILED, APPLIED]))
    table = lines[lines.index("last 2 processed events, newest first".ljust(60)) :]
    assert all("…" not in line for line in lines)
    body = [line.split("│")[1:7] for line in table if line.startswith("│")]
    columns = ["".join(cells[i].strip() for cells in body) for i in range(6)]
    assert columns == [
        "2026-01-02T04:04:05Z2026-01-02T03:04:05Z",
        E2 + E1,
        "-consumer.delete",
        "failed(consumer_exists)applied",
        "-3",
        "-events/2@17",
    ]


def test_a_tombstone_and_its_inbox_rows_as_json() -> None:
    assert show._document(C1, show._Found(TOMBSTONE, [FAILED, APPLIED])) == {
        "consumer_uuid": C1,
        "found": True,
        "generation": 3,
        "deleted": True,
        "project_id": "p",
        "user_id": "u",
        "consumer_type": None,
        "last_event_id": E1,
        "created_at": "2026-01-02T01:04:05Z",
        "updated_at": "2026-01-02T02:04:05Z",
        "deleted_at": "2026-01-02T03:04:05Z",
        "events": [
            {
                "event_id": E2,
                "type": None,
                "outcome": "failed",
                "reason": "consumer_exists",
                "generation_after": None,
                "attempts": 2,
                "source": None,
                "processed_at": "2026-01-02T04:04:05Z",
            },
            {
                "event_id": E1,
                "type": "consumer.delete",
                "outcome": "applied",
                "reason": None,
                "generation_after": 3,
                "attempts": 1,
                "source": {"topic": "events", "partition": 2, "offset": 17},
                "processed_at": "2026-01-02T03:04:05Z",
            },
        ],
    }


def test_a_consumer_not_found_is_one_line_on_stderr_then_any_rows_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, err = printed(capsys, show._Found(None, []))
    assert (out, err) == ("", f"consumergen show: no consumer {C1} in the database\n")
    out, err = printed(capsys, show._Found(None, [APPLIED]))
    assert err == f"consumergen show: no consumer {C1} in the database\n"
    assert out.splitlines()[0] == "last 1 processed events, newest first"
    assert "│ 2026-01-02T03:04:05Z │" in out and "no processed events" not in out
    assert show._document(C1, show._Found(None, [])) == {
        "consumer_uuid": C1,
        "found": False,
        "events": [],
    }


def test_a_live_consumer_without_inbox_rows(capsys: pytest.CaptureFixture[str]) -> None:
    live = ConsumerState(C1, 1, False, "p", "u", "VM", E1, at(1), at(1), None)
    out, err = printed(capsys, show._Found(live, []))
    assert err == ""
    lines = out.splitlines()
    assert lines[2].split() == ["│", "state", "│", "live", "│"]
    assert lines[6].split() == ["│", "consumer", "type", "│", "VM", "│"]
    assert lines[-1] == "no processed events in the inbox (pruned?)"
    assert show._time(None) is None
