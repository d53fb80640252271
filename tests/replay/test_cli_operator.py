"""`consumergen replay`, `archive` and `verify` end to end in-process without a broker:
archives on disk, SQLite databases, and the topic read through aiokafka's consumer and
admin client faked at their calls (tests/replay/fake_topic.py).  What the operator
sees: the summary and its exit status, the dry run's list, the archive's report on
stderr, verify's answer; and that a refused argument reads and writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from service.cli import cli
from service.config import load_settings
from service.replay.records import to_archive_line
from service.store.migrate import upgrade
from tests.replay.fake_topic import Log, install, stored
from tests.replay.fakes import consumer_id, delete_doc, record, upsert_doc

C1, C2, C3 = consumer_id(1), consumer_id(2), consumer_id(3)


# The CLI configures logging for the process: the suite's log guard comes back after.
pytestmark = pytest.mark.usefixtures("restore_log_guard")


def migrate(env: dict[str, str]) -> None:
    asyncio.run(upgrade(load_settings(database_url=env["CONSUMERGEN_DATABASE_URL"])))


def cells(line: str) -> list[str]:
    """The words of a table row, without rich's borders."""
    return line.replace("│", " ").replace("┃", " ").split()


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


#: C1 created then changed, C2 created, C3 created then deleted (a tombstone).
DOCS = [
    upsert_doc(C1),
    upsert_doc(C2),
    upsert_doc(C1, project_id="p2"),
    upsert_doc(C3),
    delete_doc(C3),
]


def write_archive(tmp_path: Path, lines: list[str], name: str = "a.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def event_lines(docs: list[dict[str, Any]]) -> list[str]:
    return [to_archive_line(record(i, doc)) for i, doc in enumerate(docs)]


# --- replay ------------------------------------------------------------------------------


def test_replay_of_an_archive_applies_it_and_prints_the_summary(
    env: dict[str, str], tmp_path: Path
) -> None:
    migrate(env)
    path = write_archive(tmp_path, event_lines(DOCS[:3]))
    result = invoke(env, "replay", "--archive", str(path))
    assert result.exit_code == 0, result.output
    assert "replay summary" in result.stdout and "dry run" not in result.stdout
    assert f"archive {path}" in result.stdout
    rows = {tuple(cells(line)[:2]) for line in result.stdout.splitlines()}
    assert ("applied", "3") in rows and ("events", "read") in rows
    again = json.loads(invoke(env, "replay", "--archive", str(path), "--json").stdout)
    assert again["outcomes"] == {"applied": 0, "duplicate": 3, "rejected": 0, "failed": 0}
    assert again["mode"] == "apply" and again["problems"] == 0


def test_a_replay_with_invalid_records_exits_1_and_counts_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    migrate(env)
    # 1,200 bytes of UTF-8 in fields of 200 characters: valid, and over 1,024 bytes.
    big = upsert_doc(C2, project_id="€" * 200, user_id="€" * 200)
    lines = [*event_lines(DOCS[:2]), to_archive_line(record(7, big))]
    lines.append(to_archive_line(record(8, value=b"not json", key=C1.encode())))
    path = write_archive(tmp_path, lines)
    result = invoke(env, "replay", "--archive", str(path), "--json", "--max-event-bytes", "1024")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["invalid_by_reason"] == {"not_json": 1, "too_large": 1}
    assert doc["outcomes"]["applied"] == 2 and doc["problems"] == 2


def test_a_dry_run_lists_the_consumers_that_would_change_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    migrate(env)
    path = write_archive(tmp_path, event_lines(DOCS[:3]))
    result = invoke(env, "replay", "--archive", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "replay summary (dry run: nothing was written)" in result.stdout
    assert "consumers that would change: 2" in result.stdout
    assert C1 in result.stdout and C2 in result.stdout
    cut = invoke(env, "replay", "--archive", str(path), "--dry-run", "--show-consumers", "1")
    assert "consumers that would change: 2 (first 1; --json lists all)" in cut.stdout
    assert C1 in cut.stdout and C2 not in cut.stdout
    none = invoke(env, "replay", "--archive", str(path), "--dry-run", "--show-consumers", "0")
    assert "consumers that would change" not in none.stdout
    doc = json.loads(invoke(env, "replay", "--archive", str(path), "--dry-run", "--json").stdout)
    assert doc["dry_run"] is True and doc["consumers"][C1]["generation_after"] == 2
    applied = json.loads(invoke(env, "replay", "--archive", str(path), "--json").stdout)
    assert applied["outcomes"]["applied"] == 3  # the dry runs wrote nothing


def test_the_range_options_filter_an_archive(env: dict[str, str], tmp_path: Path) -> None:
    migrate(env)
    path = write_archive(tmp_path, event_lines(DOCS[:3]))
    doc = json.loads(
        invoke(env, "replay", "--archive", str(path), "--from-offset", "0:1", "--json").stdout
    )
    assert doc["read"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dlq", "--archive", "{archive}"], "choose one source"),
        (["--archive", "{bad}"], "line 2: not JSON"),
    ],
)
def test_a_refused_replay_reads_and_writes_nothing(
    env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    migrate(env)
    good = write_archive(tmp_path, event_lines(DOCS[:1]))
    bad = write_archive(tmp_path, [*event_lines(DOCS[:1]), "{nope"], "bad.jsonl")
    given = [a.format(archive=good, bad=bad) for a in args]
    result = invoke(env, "replay", *given)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    doc = json.loads(invoke(env, "replay", "--archive", str(good), "--json").stdout)
    assert doc["outcomes"]["applied"] == 1  # the refused run applied nothing


def test_replay_of_the_topic_and_of_the_dead_letter_topic(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(env)
    log = Log(
        {
            0: [
                stored(0, 0, key=C1.encode(), value=json.dumps(DOCS[0]).encode()),
                stored(0, 1, key=C2.encode(), value=json.dumps(DOCS[1]).encode()),
            ]
        }
    )
    install(monkeypatch, log)
    doc = json.loads(invoke(env, "replay", "--from-beginning", "--json").stdout)
    assert doc["source"] == "topic events (0:[0,2))"
    assert doc["outcomes"]["applied"] == 2
    refused = invoke(env, "replay", "--dlq", "--json")  # the dead-letter topic is not there
    assert refused.exit_code == 2 and "topic events.dlq does not exist" in refused.stderr
    log.topic = "events.dlq"
    dlq = json.loads(invoke(env, "replay", "--dlq", "--json").stdout)  # all of it by default
    assert dlq["source"] == "topic events.dlq (0:[0,2))"
    assert dlq["outcomes"]["duplicate"] == 2


# --- archive -----------------------------------------------------------------------------


def said(result: Result) -> list[str]:
    """The report lines on stderr (without the log lines)."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("archived ", "  partition ", "skipped "))
    ]


def fake_log(monkeypatch: pytest.MonkeyPatch, *, undecodable: bool = False) -> Log:
    log = Log({0: [stored(0, o) for o in range(3)], 1: [stored(1, o) for o in range(2)]})
    if undecodable:
        log.records[0][1] = stored(0, 1, undecodable="header #1 name is not UTF-8")
    return install(monkeypatch, log)


def test_archive_writes_the_range_and_reports_it_on_stderr(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_log(monkeypatch)
    out = tmp_path / "out.jsonl"
    result = invoke(env, "archive", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((d["partition"], d["offset"]) for d in lines) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    stderr = said(result)
    assert stderr[0].startswith(f"archived 5 records of events to {out} in ")
    assert stderr[0].endswith(" s")
    assert stderr[1:] == ["  partition 0: offsets 0..2", "  partition 1: offsets 0..1"]
    exists = invoke(env, "archive", "-o", str(out))
    assert exists.exit_code == 2 and "exists (use --force to replace it)" in exists.stderr
    forced = invoke(env, "archive", "-o", str(out), "--force", "--partition", "1")
    assert forced.exit_code == 0, forced.output
    assert len(out.read_text().splitlines()) == 2


def test_archive_to_stdout_and_its_refusals(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_log(monkeypatch)
    result = invoke(env, "archive", "-o", "-", "--partition", "0")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["offset"] for line in result.stdout.splitlines()] == [0, 1, 2]
    assert said(result)[0].startswith("archived 3 records of events to stdout in ")
    nowhere = invoke(env, "archive", "-o", str(tmp_path / "no" / "such" / "out.jsonl"))
    assert nowhere.exit_code == 2 and "no such folder" in nowhere.stderr
    dlq = invoke(env, "archive", "-o", "-", "--dlq")
    assert dlq.exit_code == 2 and "topic events.dlq does not exist" in dlq.stderr


def test_archive_skips_and_lists_undecodable_records_and_exits_1(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_log(monkeypatch, undecodable=True)
    out = tmp_path / "out.jsonl"
    result = invoke(env, "archive", "-o", str(out))
    assert result.exit_code == 1, result.output
    assert len(out.read_text().splitlines()) == 4
    assert said(result)[-2:] == [
        "skipped 1 record(s) the Kafka client cannot decode (not in the archive):",
        "  partition 0 offset 1: header #1 name is not UTF-8",
    ]


# --- verify ------------------------------------------------------------------------------


def applied(env: dict[str, str], tmp_path: Path, docs: list[dict[str, Any]]) -> Path:
    migrate(env)
    path = write_archive(tmp_path, event_lines(docs), "history.jsonl")
    assert invoke(env, "replay", "--archive", str(path)).exit_code == 0
    return path


def sql(env: dict[str, str], statement: str) -> None:
    from sqlalchemy import text

    from service.store.engine import create_engine

    async def run() -> None:
        engine = create_engine(load_settings(database_url=env["CONSUMERGEN_DATABASE_URL"]))
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_verify_of_an_archive_is_clean_then_lists_differences(
    env: dict[str, str], tmp_path: Path
) -> None:
    history = applied(env, tmp_path, DOCS)
    clean = invoke(env, "verify", "--archive", str(history))
    assert clean.exit_code == 0, clean.output
    assert "rebuild of the expected state" in clean.stdout
    assert "compared 3 consumers: clean" in clean.stdout
    sql(env, f"UPDATE consumers SET generation = 5 WHERE uuid = '{C2}'")
    sql(env, f"DELETE FROM consumers WHERE uuid = '{C1}'")
    found = invoke(env, "verify", "--archive", str(history))
    assert found.exit_code == 1
    assert "compared 3 consumers: 2 differences" in found.stdout
    assert "differences" in found.stdout and C1 in found.stdout and C2 in found.stdout
    first = invoke(env, "verify", "--archive", str(history), "--limit", "1")
    assert "differences (first 1)" in first.stdout and C2 not in first.stdout
    bare = invoke(env, "verify", "--archive", str(history), "--limit", "0")
    assert C1 not in bare.stdout and bare.exit_code == 1
    doc = json.loads(invoke(env, "verify", "--archive", str(history), "--json").stdout)
    assert doc["counts"] == {"missing": 1, "different": 1}
    assert doc["consumers_with_pruned_inbox_rows"] == 1


def test_verify_says_what_pruning_left_and_strict_counts_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    history = applied(env, tmp_path, DOCS)
    sql(env, f"DELETE FROM consumers WHERE uuid = '{C3}'")
    sql(env, f"DELETE FROM processed_events WHERE consumer_uuid = '{C1}' AND generation_after = 1")
    result = invoke(env, "verify", "--archive", str(history))
    assert result.exit_code == 0, result.output
    assert "1 tombstones are in the log but not in the database" in result.stdout
    assert "1 consumers have fewer applied inbox rows than their generation" in result.stdout
    strict = invoke(env, "verify", "--archive", str(history), "--strict")
    assert strict.exit_code == 1 and C3 in strict.stdout


def test_verify_of_the_topic_after_archives(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = applied(env, tmp_path, DOCS[:4])
    log = Log({0: [stored(0, 4, key=C3.encode(), value=json.dumps(DOCS[4]).encode())]})
    log.log_start[0] = 4
    install(monkeypatch, log)
    only_archive = invoke(env, "verify", "--archive", str(history))
    assert only_archive.exit_code == 0, only_archive.output
    with_topic = invoke(env, "verify", "--archive", str(history), "--with-topic", "--json")
    assert with_topic.exit_code == 1  # the live database never saw the topic's delete
    doc = json.loads(with_topic.stdout)
    assert doc["rebuild"]["read"] == 5
    assert doc["rebuild"]["source"] == f"archive {history}, topic events (0:[4,5))"
    assert [(d["consumer_uuid"], d["kind"]) for d in doc["differences"]] == [(C3, "different")]


@pytest.mark.parametrize(
    ("scratch", "message"),
    [("{live}", "is the live database"), ("mysql://h/db", "--scratch-url")],
)
def test_a_refused_scratch_database(
    env: dict[str, str], tmp_path: Path, scratch: str, message: str
) -> None:
    history = applied(env, tmp_path, DOCS[:1])
    url = scratch.format(live=env["CONSUMERGEN_DATABASE_URL"])
    result = invoke(env, "verify", "--archive", str(history), "--scratch-url", url)
    assert result.exit_code == 2
    assert message in result.stderr
