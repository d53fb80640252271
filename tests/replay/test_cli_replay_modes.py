"""`consumergen replay` and `verify` as the operator runs them, without a broker: the
dead-letter topic's republish dry run (no database at all), a dry run that leaves the
database file as it was, a database whose schema is behind or that is not a database,
archive lines written without a topic (the configured one is theirs), and `archive`
fetching a batch at a time."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from tests.replay.fake_topic import Log, install, stored
from tests.replay.test_cli_operator import (
    C1,
    C2,
    DOCS,
    applied,
    event_lines,
    invoke,
    migrate,
    write_archive,
)

# The CLI configures logging for the process: the suite's log guard comes back after.
pytestmark = pytest.mark.usefixtures("restore_log_guard")


def live_file(env: dict[str, str]) -> Path:
    return Path(env["CONSUMERGEN_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///"))


def test_a_republish_dry_run_of_the_dead_letter_topic_needs_no_database(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It only reads the dead-letter topic and counts what is valid now: it opens no
    database (there is none here) and writes none."""
    valid = [json.dumps(doc).encode() for doc in DOCS[:2]]
    log = Log(
        {
            0: [
                stored(0, 0, key=C1.encode(), value=valid[0]),
                stored(0, 1, key=C2.encode(), value=b"still not json"),
                stored(0, 2, key=C2.encode(), value=valid[1]),
            ]
        },
        topic="events.dlq",
    )
    install(monkeypatch, log)
    result = invoke(env, "replay", "--dlq", "--republish", "--dry-run", "--json")
    assert result.exit_code == 1, result.output  # the record that is still invalid
    doc = json.loads(result.stdout)
    assert doc["mode"] == "republish_dry_run" and doc["dry_run"] is True
    assert doc["source"] == "topic events.dlq (0:[0,3))"
    assert doc["republished"] == 2 and doc["invalid_by_reason"] == {"not_json": 1}
    assert not live_file(env).exists()
    table = invoke(env, "replay", "--dlq", "--republish", "--dry-run")
    assert table.exit_code == 1 and "replay summary" in table.stdout
    assert not live_file(env).exists()


def test_a_dry_run_leaves_the_database_file_as_it_was(env: dict[str, str], tmp_path: Path) -> None:
    """Byte for byte, and with no journal files beside it: a dry run opens the database
    read-only, so not even a journal mode is set on it."""
    migrate(env)
    path = live_file(env)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    connection.close()
    before = path.read_bytes()
    archive = write_archive(tmp_path, event_lines(DOCS[:3]))
    result = invoke(env, "replay", "--archive", str(archive), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["consumers"][C1]["generation_after"] == 2
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.glob("live.db*")) == ["live.db"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_replay_into_a_database_without_the_schema_is_one_line_and_exit_1(
    env: dict[str, str], tmp_path: Path, dry_run: bool
) -> None:
    """The schema is checked before the first event: the operator reads that the
    database must be migrated, not a driver error about a missing table."""
    with sqlite3.connect(live_file(env)) as connection:
        connection.execute("CREATE TABLE unrelated (x INTEGER)")
    connection.close()
    archive = write_archive(tmp_path, event_lines(DOCS[:1]))
    args = ["replay", "--archive", str(archive), *(["--dry-run"] if dry_run else [])]
    result = invoke(env, *args)
    assert result.exit_code == 1, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("consumergen ")]
    assert len(said) == 1 and said[0].startswith("consumergen replay: "), result.stderr
    assert "run `consumergen db upgrade` first" in said[0], said
    assert "no such table" not in result.stderr
    assert result.stdout == ""


def test_a_database_file_that_is_not_a_database_is_named_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    live_file(env).write_bytes(b"this is a text file, not SQLite\n" * 200)
    archive = write_archive(tmp_path, event_lines(DOCS[:1]))
    result = invoke(env, "replay", "--archive", str(archive))
    assert result.exit_code == 1, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("consumergen ")]
    assert said == ["consumergen replay: DatabaseError: file is not a database"], result.stderr


def topicless(lines: list[str]) -> list[str]:
    """Archive lines as written by hand or by another tool: no "topic" field."""
    out = []
    for line in lines:
        doc = json.loads(line)
        del doc["topic"]
        out.append(json.dumps(doc))
    return out


def test_archive_lines_without_a_topic_replay_as_the_configured_topics(
    env: dict[str, str], tmp_path: Path
) -> None:
    migrate(env)
    archive = write_archive(tmp_path, topicless(event_lines(DOCS[:3])))
    result = invoke(env, "replay", "--archive", str(archive), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outcomes"]["applied"] == 3
    shown = invoke(env, "show", C1, "--json")
    assert shown.exit_code == 0, shown.output
    topics = [e["source"]["topic"] for e in json.loads(shown.stdout)["events"]]
    assert topics == ["events", "events"], topics


def test_verify_reads_archive_lines_without_a_topic(env: dict[str, str], tmp_path: Path) -> None:
    applied(env, tmp_path, DOCS)
    archive = write_archive(tmp_path, topicless(event_lines(DOCS)), "bare.jsonl")
    result = invoke(env, "verify", "--archive", str(archive))
    assert result.exit_code == 0, result.output
    assert "compared 3 consumers: clean" in result.stdout


def test_archive_fetches_at_most_a_batch_of_records_at_a_time(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONSUMERGEN_BATCH_MAX_EVENTS bounds what one fetch brings into memory, however
    long the topic (the archive itself is the same either way)."""
    log = install(monkeypatch, Log({0: [stored(0, o) for o in range(5)]}))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli,
        ["archive", "-o", str(out)],
        env={**env, "CONSUMERGEN_BATCH_MAX_EVENTS": "2"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["offset"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    fetches = [fetch for consumer in log.consumers for fetch in consumer.fetches]
    assert fetches and {fetch["max_records"] for fetch in fetches} == {2}
