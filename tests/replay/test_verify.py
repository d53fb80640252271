"""`verify`: clean after a normal run; finds tampering; treats pruning as documented."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.testing.daemon import Topics, daemon_settings
from service.testing.database import consumer_state
from service.testing.workload import expected_state, mixed_stream
from tests.replay.helpers import Cli, run_daemon_over, settings_env

pytestmark = [pytest.mark.kafka]

EXTRA = "00000000-0000-4000-8000-0000000e0e0e"


async def _sql(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def test_verify_is_clean_then_finds_every_kind_of_tampering(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path
) -> None:
    stream = mixed_stream(consumers=30, events=300, seed=5)
    settings = daemon_settings(kafka_bootstrap, database_url, topics)
    await run_daemon_over(settings, kafka_bootstrap, topics, stream)
    cli = Cli(settings_env(settings))

    clean = await cli.json("verify")
    assert clean["clean"] is True and clean["differences"] == []
    assert clean["consumers_compared"] == len(expected_state(stream).state())
    assert clean["rebuild"]["read"] == len(stream)
    ok = await cli("verify")
    assert ok.exit_code == 0 and "clean" in ok.stdout

    state = await consumer_state(database_url)
    live = sorted(u for u, s in state.items() if not s[1])
    tampered, removed = live[0], live[1]
    await _sql(
        database_url,
        f"UPDATE consumers SET generation = generation + 1 WHERE uuid = '{tampered}'",
        f"DELETE FROM consumers WHERE uuid = '{removed}'",
        "INSERT INTO consumers (uuid, project_id, user_id, generation, last_event_id,"
        " created_at, updated_at) SELECT '" + EXTRA + "', project_id, user_id, 3,"
        " last_event_id, created_at, updated_at FROM consumers WHERE uuid = '" + tampered + "'",
    )
    report = await cli.json("verify", code=1)
    assert report["clean"] is False
    found = {(d["consumer_uuid"], d["kind"]) for d in report["differences"]}
    assert (tampered, "different") in found
    assert (removed, "missing") in found
    assert (EXTRA, "extra") in found
    different = next(d for d in report["differences"] if d["consumer_uuid"] == tampered)
    generation = state[tampered][0]
    assert different["fields"]["generation"] == {"expected": generation, "live": generation + 1}
    # The inbox cross-check also sees the tampered row: fewer applied rows than generation.
    assert report["consumers_with_pruned_inbox_rows"] >= 1
    assert {d["kind"] for d in report["differences"]} == {"different", "missing", "extra"}

    text_report = await cli("verify")
    assert text_report.exit_code == 1
    for uuid in (tampered, removed, EXTRA):
        assert uuid in text_report.stdout


async def test_verify_from_an_archive_and_pruned_tombstones(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics, tmp_path
) -> None:
    stream = mixed_stream(consumers=30, events=300, seed=9)
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics)
    await run_daemon_over(settings, kafka_bootstrap, topics, stream)
    cli = Cli(settings_env(settings))
    archive = tmp_path / "events.jsonl"
    made = await cli("archive", "--output", str(archive))
    assert made.exit_code == 0, made.stderr
    assert len(archive.read_text().splitlines()) == len(stream)

    from_archive = await cli.json("verify", "--archive", str(archive))
    assert from_archive["clean"] is True and from_archive["rebuild"]["read"] == len(stream)
    both = await cli.json("verify", "--archive", str(archive), "--with-topic")
    assert both["clean"] is True and both["rebuild"]["read"] == 2 * len(stream)

    state = await consumer_state(sqlite_url)
    tombstones = sorted(u for u, s in state.items() if s[1])
    assert tombstones, "the workload deletes some consumers"
    await _sql(sqlite_url, f"DELETE FROM consumers WHERE uuid = '{tombstones[0]}'")  # a prune
    lenient = await cli.json("verify")
    assert lenient["clean"] is True and lenient["pruned_tombstones"] == 1
    strict = await cli.json("verify", "--strict", code=1)
    assert strict["differences"][0]["consumer_uuid"] == tombstones[0]
