"""How `replay` and `verify` show progress: on a terminal, a rich bar on stderr (stdout
keeps only the report, so it can be piped) and no progress log lines; off a terminal,
a progress log line after a batch once 5 s have passed, so ``--batch-size`` paces them.

The CLI runs in-process with stdout and stderr replaced by buffers that say whether
they are a terminal; time for the runner's progress clock is a fake that moves 10 s at
each reading, so "5 s have passed" holds at every batch without waiting."""

from __future__ import annotations

import io
import json
import re
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.replay import runner
from tests.replay.fake_topic import Log, install, stored
from tests.replay.test_cli_operator import (
    C1,
    C2,
    DOCS,
    applied,
    event_lines,
    migrate,
    write_archive,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: The bar's own line: the task, the bar, the count done of the total.
BAR = re.compile(r"replay\s+━+\s+3/3")


# The CLI configures logging for the process: the suite's log guard comes back after.
pytestmark = pytest.mark.usefixtures("restore_log_guard")


class Stream(io.StringIO):
    """A standard stream that is, or is not, a terminal."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def on_terminal(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    *args: str,
    stdout_terminal: bool = False,
    columns: int = 120,
) -> tuple[int, str, str]:
    """Run the CLI with stderr on a terminal (stdout piped unless ``stdout_terminal``):
    exit code, stdout as written, stderr without rich's cursor and colour codes."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**env, "COLUMNS": str(columns), "TERM": "xterm-256color"}.items():
        monkeypatch.setenv(name, value)
    out, err = Stream(terminal=stdout_terminal), Stream(terminal=True)
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stdout", out)
        patched.setattr(sys, "stderr", err)
        try:
            cli.main(list(args), prog_name="consumergen")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
    return code, out.getvalue(), ANSI.sub("", err.getvalue())


@pytest.fixture
def fast_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's clock moves 10 s at each reading (only the runner's: the event
    loop and rich keep the real one)."""
    now = [0.0]

    def monotonic() -> float:
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr(runner, "time", types.SimpleNamespace(monotonic=monotonic))


def progress_lines(stderr: str) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        if '"replay_progress"' in line:
            found.append(json.loads(line[line.index("{") :]))
    return found


def test_on_a_terminal_replay_draws_its_bar_on_stderr_and_logs_no_progress_lines(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_clock: None
) -> None:
    migrate(env)
    archive = write_archive(tmp_path, event_lines(DOCS[:3]))
    code, out, err = on_terminal(monkeypatch, env, "replay", "--archive", str(archive))
    assert code == 0, (out, err)
    assert BAR.search(err), err
    assert "replay summary" in out and not BAR.search(out)
    assert "replay_finished" in err  # the log lines are there, on the same stream
    assert "replay_progress" not in err  # the bar replaces them, however long the run


def test_off_a_terminal_replay_logs_progress_after_each_batch_of_the_topic(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fast_clock: None
) -> None:
    migrate(env)
    docs = [json.dumps(doc).encode() for doc in DOCS[:3]]
    keys = [C1, C2, C1]
    install(
        monkeypatch, Log({0: [stored(0, o, key=keys[o].encode(), value=docs[o]) for o in range(3)]})
    )
    result = CliRunner().invoke(
        cli, ["replay", "--from-beginning", "--batch-size", "1"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "━━" not in result.stderr  # no bar off a terminal
    assert [line["read"] for line in progress_lines(result.stderr)] == [1, 2, 3]


def test_on_a_terminal_verify_draws_the_rebuilds_bar_on_stderr(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = applied(env, tmp_path, DOCS[:3])
    code, out, err = on_terminal(monkeypatch, env, "verify", "--archive", str(history))
    assert code == 0, (out, err)
    assert BAR.search(err), err
    assert "compared 2 consumers: clean" in out and not BAR.search(out)


def test_on_a_terminal_verify_of_the_topic_draws_the_rebuilds_bar_on_stderr(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = applied(env, tmp_path, DOCS[:3])
    install(monkeypatch, Log({0: []}))
    code, out, err = on_terminal(
        monkeypatch, env, "verify", "--archive", str(history), "--with-topic"
    )
    assert code == 0, (out, err)
    assert BAR.search(err), err
    assert "compared 2 consumers: clean" in out and not BAR.search(out)


def test_off_a_terminal_verify_logs_the_rebuilds_progress_batch_by_batch(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_clock: None
) -> None:
    """CONSUMERGEN_BATCH_MAX_EVENTS paces the rebuild of the archive, then of the topic."""
    history = applied(env, tmp_path, DOCS[:3])
    again = [stored(0, o, key=C1.encode(), value=json.dumps(DOCS[o]).encode()) for o in (0, 2)]
    install(monkeypatch, Log({0: again}))
    result = CliRunner().invoke(
        cli,
        ["verify", "--archive", str(history), "--with-topic"],
        env={**env, "CONSUMERGEN_BATCH_MAX_EVENTS": "1"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "compared 2 consumers: clean" in result.stdout
    assert [line["read"] for line in progress_lines(result.stderr)] == [1, 2, 3, 1, 2]
