"""What `replay`, `verify` and `show` print when stdout is a terminal: the tables' own
styles and nothing more (no highlighter colouring numbers or identifiers), lines that
fit the terminal's width, and identifiers never cut, even on a narrow terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replay.test_cli_operator import (
    C1,
    C2,
    C3,
    DOCS,
    applied,
    event_lines,
    migrate,
    sql,
    write_archive,
)
from tests.replay.test_cli_progress import ANSI, on_terminal

# The CLI configures logging for the process: the suite's log guard comes back after.
pytestmark = pytest.mark.usefixtures("restore_log_guard")


def rows(out: str) -> list[str]:
    """A table's body rows as written (borders are the only thing around the cells)."""
    return [line for line in out.splitlines() if line.startswith("│")]


def test_on_a_terminal_values_carry_no_colour(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Titles, headers and the verdict have their styles; a count, a path or a UUID is
    printed as it is (rich's highlighter, which would colour numbers and parts of
    identifiers, is off)."""
    migrate(env)
    archive = write_archive(tmp_path, event_lines(DOCS[:3]))
    code, out, _ = on_terminal(
        monkeypatch, env, "replay", "--archive", str(archive), "--dry-run", stdout_terminal=True
    )
    assert code == 0, out
    assert "\x1b[" in out  # a terminal: the headers are styled
    assert len(rows(out)) >= 6 and C1 in out
    assert [row for row in rows(out) if "\x1b[" in row] == []
    history = applied(env, tmp_path, DOCS)
    sql(env, f"UPDATE consumers SET generation = 5 WHERE uuid = '{C2}'")
    code, out, _ = on_terminal(
        monkeypatch, env, "verify", "--archive", str(history), stdout_terminal=True
    )
    assert code == 1, out
    assert "compared 3 consumers: \x1b[1;31m1 differences\x1b[0m" in out, out
    assert [row for row in rows(out) if "\x1b[" in row] == []


def test_on_an_80_column_terminal_verify_s_lines_fit(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sentences wrap at the terminal's width like its tables do."""
    history = applied(env, tmp_path, DOCS)
    sql(env, f"DELETE FROM consumers WHERE uuid = '{C3}'")
    code, out, _ = on_terminal(
        monkeypatch, env, "verify", "--archive", str(history), stdout_terminal=True, columns=80
    )
    assert code == 0, out
    text = ANSI.sub("", out)
    assert "tombstones are in the log but not in the database" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 80, text


def test_on_a_narrow_terminal_verify_never_cuts_a_consumer_uuid(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = applied(env, tmp_path, DOCS)
    sql(env, f"UPDATE consumers SET generation = 5 WHERE uuid = '{C2}'")
    code, out, _ = on_terminal(
        monkeypatch, env, "verify", "--archive", str(history), stdout_terminal=True, columns=40
    )
    assert code == 1, out
    assert C2 in ANSI.sub("", out), out


def test_on_a_narrow_terminal_show_never_cuts_an_event_id(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied(env, tmp_path, DOCS[:3])
    code, out, _ = on_terminal(monkeypatch, env, "show", C1, stdout_terminal=True, columns=40)
    assert code == 0, out
    text = ANSI.sub("", out)
    for doc in (DOCS[0], DOCS[2]):
        assert doc["event_id"] in text, text
