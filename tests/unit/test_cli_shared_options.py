"""The options several verbs share (``service/cli/_common.py``'s ``--database-url``,
``service/cli/_operator.py``'s range options): each verb's ``--help`` shows them as the
operator reads them (name, metavar, help text), and they do what they say when given:
the time range filters an archive, ``--database-url`` chooses the database.

These options are applied while the modules are imported, so mutmut's forked workers
never see their mutants; ``scripts/mutation_fresh.py`` re-checks those in a fresh
interpreter against the test files of the verbs' modules, which this file is one of
(docs/mutation.md)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import cli
from service.config import load_settings
from service.replay.records import to_archive_line
from service.store.migrate import upgrade
from tests.log_guard import guard_restored
from tests.replay.fakes import consumer_id, record, upsert_doc

RANGE_OPTIONS = [
    "--from-beginning Start at the first record still in the log.",
    "--from-offset P:O Start partition P at offset O (repeatable; names the partitions to read).",
    "--from-timestamp TIME Start at the first record at or after TIME (ISO 8601; naive = UTC).",
    "--to-offset P:O Stop partition P after offset O, inclusive (repeatable).",
    "--to-timestamp TIME Stop before the first record at or after TIME.",
    "--partition INTEGER RANGE Read only this partition (repeatable). Default: all. [x>=0]",
]
DATABASE_URL = "--database-url TEXT Overrides CONSUMERGEN_DATABASE_URL."


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The CLI configures logging for the process: the suite's guard comes back after."""
    with guard_restored():
        yield


def options_of(*verb: str) -> list[str]:
    """The option lines of ``consumergen VERB --help``, one per option, spaces folded."""
    result = CliRunner().invoke(cli, [*verb, "--help"], terminal_width=300, max_content_width=300)
    assert result.exit_code == 0, result.output
    listed = result.stdout.split("\nOptions:\n", 1)[1]
    return [re.sub(r"\s+", " ", line.strip()) for line in listed.splitlines() if line.strip()]


@pytest.mark.parametrize("verb", [("replay",), ("archive",)])
def test_the_range_options_in_help(verb: tuple[str, ...]) -> None:
    options = options_of(*verb)
    start = options.index(RANGE_OPTIONS[0])
    assert options[start : start + len(RANGE_OPTIONS)] == RANGE_OPTIONS


@pytest.mark.parametrize(
    "verb",
    [("replay",), ("verify",), ("show",), ("db", "upgrade"), ("db", "current"), ("db", "prune")],
)
def test_database_url_in_help(verb: tuple[str, ...]) -> None:
    assert DATABASE_URL in options_of(*verb)


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


#: Three events at 10:00, 11:00 and 12:00 UTC on 2026-01-01, offsets 0 to 2.
HOUR_MS = 3_600_000
TEN = 1_767_261_600_000  # 2026-01-01T10:00:00Z


def archive(tmp_path: Path) -> Path:
    lines = [
        to_archive_line(record(i, upsert_doc(consumer_id(i + 1)), timestamp_ms=TEN + i * HOUR_MS))
        for i in range(3)
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_the_time_range_filters_an_archive_on_the_database_given(tmp_path: Path) -> None:
    """``--database-url`` wins over the environment's database, which is left alone."""
    elsewhere = f"sqlite+aiosqlite:///{tmp_path / 'given.db'}"
    asyncio.run(upgrade(load_settings(database_url=elsewhere)))
    env = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
    }
    path = str(archive(tmp_path))
    window = ["--from-timestamp", "2026-01-01T10:30:00", "--to-timestamp", "2026-01-01T12:00:00"]
    result = invoke(
        env, "replay", "--archive", path, *window, "--json", "--database-url", elsewhere
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outcomes"]["applied"] == 1  # 11:00 only
    assert not (tmp_path / "never.db").exists()
    later = invoke(
        env,
        "replay",
        "--archive",
        path,
        "--from-timestamp",
        "2026-01-01T11:00:00+00:00",
        "--json",
        "--database-url",
        elsewhere,
    )
    assert json.loads(later.stdout)["outcomes"] == {
        "applied": 1,  # 12:00
        "duplicate": 1,  # 11:00, applied above
        "rejected": 0,
        "failed": 0,
    }
