"""Command-line verbs print what the person asked for: the libraries' INFO lines
(alembic's migration chatter above all) only with --verbose or at DEBUG; the daemon
(`run`) keeps logging them.  Real processes: the logging set-up is the CLI's own."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import load_settings
from service.logging import LogHandler, configure_logging
from service.logging.setup import LibraryQuiet


def _cli(folder: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    env.update(
        CONSUMERGEN_DATABASE_URL=f"sqlite+aiosqlite:///{folder / 'db.sqlite3'}",
        CONSUMERGEN_BOOTSTRAP_SERVERS="127.0.0.1:9",  # verify --archive needs no broker
        CONSUMERGEN_LOG_FORMAT="json",
    )
    env.update({f"CONSUMERGEN_{name.upper()}": value for name, value in settings.items()})
    done = subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_verify_prints_its_answer_without_alembic_lines(tmp_path: Path) -> None:
    upgraded = _cli(tmp_path, "db", "upgrade")
    assert "revision" in upgraded.stdout and "alembic" not in upgraded.stderr
    (tmp_path / "empty.jsonl").write_text("")
    quiet = _cli(tmp_path, "verify", "--archive", "empty.jsonl")
    assert "clean" in quiet.stdout
    assert "alembic" not in quiet.stderr and "alembic" not in quiet.stdout, quiet.stderr
    # The lines are there to be had: --verbose and DEBUG show them (verify migrates a
    # scratch database, and alembic says so).
    verbose = _cli(tmp_path, "--verbose", "verify", "--archive", "empty.jsonl")
    assert '"logger": "alembic.runtime.migration"' in verbose.stderr
    assert "Running upgrade" in verbose.stderr
    debug = _cli(tmp_path, "verify", "--archive", "empty.jsonl", log_level="DEBUG")
    assert "Running upgrade" in debug.stderr


@pytest.mark.parametrize(
    ("name", "level", "shown"),
    [
        ("alembic.runtime.migration", logging.INFO, False),
        ("aiokafka.conn", logging.INFO, False),
        ("aiokafka.conn", logging.WARNING, True),
        ("sqlalchemy.engine", logging.ERROR, True),
        ("service.replay.runner", logging.INFO, True),
        ("service", logging.INFO, True),
        ("servicex", logging.INFO, False),
    ],
)
def test_the_filter_keeps_our_lines_and_every_warning(name: str, level: int, shown: bool) -> None:
    record = logging.LogRecord(name, level, __file__, 1, "message", None, None)
    assert LibraryQuiet().filter(record) is shown


def _filters() -> list[logging.Filter]:
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, LogHandler)]
    return [f for f in handler.filters if isinstance(f, LibraryQuiet)]


def test_run_configures_again_without_the_filter_and_debug_never_has_it(
    restore_log_guard: None,
) -> None:
    buffer = io.StringIO()
    settings = load_settings(log_redaction_key="quiet-test")
    configure_logging(settings, stream=buffer, quiet_libraries=True)
    assert len(_filters()) == 1
    configure_logging(settings, stream=buffer)  # what `run` does: its logs are unchanged
    assert _filters() == []
    debug = load_settings(log_level="DEBUG", log_redaction_key="quiet-test")
    configure_logging(debug, stream=buffer, quiet_libraries=True)
    assert _filters() == []
