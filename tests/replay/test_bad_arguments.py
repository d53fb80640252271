"""Bad arguments: one clear error, a non-zero exit, and nothing read into or written to
the database or the topics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.testing.daemon import Topics, daemon_settings
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import end_offsets
from service.testing.model import event_doc
from tests.replay.helpers import Cli, run_daemon_over, settings_env

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def applied(kafka_bootstrap: str, database_url: str, topics: Topics) -> Cli:
    """A topic with 6 events, all applied; then 3 more events nobody applied yet."""
    consumers = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 4)]
    docs = [event_doc(c, expected=None, project="p", user="u") for c in consumers]
    docs += [event_doc(c) for c in consumers]
    settings = daemon_settings(kafka_bootstrap, database_url, topics)
    await run_daemon_over(settings, kafka_bootstrap, topics, docs)
    from service.testing.kafka_io import produce_docs

    await produce_docs(kafka_bootstrap, topics.events, [event_doc(c) for c in consumers])
    return Cli(settings_env(settings))


def _archives_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "jsonl" in p.name)


def _archive_line(doc: dict, offset: int) -> str:
    key = doc["consumer_uuid"]  # the Kafka key must be the consumer_uuid (key_mismatch)
    return json.dumps({"partition": 0, "offset": offset, "key": key, "value": doc})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-beginning", "--partition", "9"], "unknown partition 9"),
        (["--from-offset", "7:0"], "unknown partition 7"),
        (["--from-offset", "0:10", "--to-offset", "0:5"], "inverted range on partition 0"),
        (
            ["--from-timestamp", "2030-01-01T00:00:00Z", "--to-timestamp", "2020-01-01T00:00:00Z"],
            "inverted range",
        ),
        (["--from-offset", "zero"], "expected PARTITION:OFFSET"),
        (["--from-timestamp", "yesterday"], "expected an ISO 8601 time"),
        ([], "say where to start"),
        (["--from-beginning", "--from-offset", "0:1"], "choose one start"),
        (["--from-beginning", "--archive", "/nonexistent/archive.jsonl"], "does not exist"),
        (["--dlq", "--archive", "/etc/hostname"], "choose one source"),
        (["--from-beginning", "--republish"], "--republish only applies to --dlq"),
        (["--from-beginning", "--batch-size", "0"], "--batch-size"),
    ],
)
async def test_bad_replay_arguments_write_nothing(
    applied: Cli, kafka_bootstrap: str, database_url: str, topics: Topics, args, message
) -> None:
    state, rows = await consumer_state(database_url), await inbox(database_url)
    ends = await end_offsets(kafka_bootstrap, topics.events)
    result = await applied("replay", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error:")
    assert await consumer_state(database_url) == state
    assert await inbox(database_url) == rows
    assert await end_offsets(kafka_bootstrap, topics.events) == ends


async def test_a_malformed_archive_line_stops_before_anything_is_applied(
    applied: Cli, database_url: str, tmp_path: Path
) -> None:
    new = "00000000-0000-4000-8000-00000000ffff"
    good = [event_doc(new, expected=None), event_doc(new)]
    lines = [_archive_line(good[0], 0), _archive_line(good[1], 1), '{"partition": 0, "offset"']
    for bad, why in (
        ('{"partition": 0, "offset"', "line 3: not JSON"),
        ('{"partition": -1, "offset": 2, "value": null}', 'line 3: "partition" must be'),
        ('{"partition": 0, "offset": 2}', 'line 3: "value" is missing'),
        ('{"partition": 0, "offset": 2, "value": "%%", "value_base64": true}', "not valid base64"),
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join([*lines[:2], bad]) + "\n")
        state, rows = await consumer_state(database_url), await inbox(database_url)
        result = await applied("replay", "--archive", str(path))
        assert result.exit_code == 2, result.stderr
        assert why in result.stderr
        assert await consumer_state(database_url) == state
        assert await inbox(database_url) == rows

    # The same good lines alone are applied, so the refusal above was the bad line's doing.
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n")
    doc = await applied.json("replay", "--archive", str(path))
    assert doc["outcomes"]["applied"] == 2
    assert (await consumer_state(database_url))[new][0] == 2


async def test_replay_reads_a_chosen_range_only(
    applied: Cli, kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """A partition with k consumers holds their 2k applied events, then their k
    unapplied ones: a range that stops before those applies nothing; the whole
    partition applies exactly its k."""
    ends = await end_offsets(kafka_bootstrap, topics.events)
    partition = next(p for p, end in ends.items() if end)
    consumers = ends[partition] // 3
    doc = await applied.json(
        "replay",
        "--from-offset",
        f"{partition}:0",
        "--to-offset",
        f"{partition}:{2 * consumers - 1}",
        "--dry-run",
    )
    assert doc["read"] == 2 * consumers
    assert doc["outcomes"] == {"applied": 0, "duplicate": 2 * consumers, "rejected": 0, "failed": 0}
    doc = await applied.json("replay", "--from-beginning", "--partition", str(partition))
    assert doc["read"] == ends[partition]
    assert doc["outcomes"]["applied"] == consumers


async def test_archive_refuses_to_overwrite(applied: Cli, tmp_path: Path) -> None:
    target = tmp_path / "a.jsonl"
    target.write_text("keep me\n")
    result = await applied("archive", "--output", str(target))
    assert result.exit_code == 2 and "exists" in result.stderr
    assert target.read_text() == "keep me\n"
    bad = await applied("archive", "--output", str(tmp_path / "a2.jsonl"), "--partition", "42")
    assert bad.exit_code == 2 and "unknown partition 42" in bad.stderr
    assert not (tmp_path / "a2.jsonl").exists()
    assert _archives_in(tmp_path) == [target.name]  # no temporary file left behind
