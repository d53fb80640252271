"""`consumergen show`: state, tombstone and the latest inbox rows; clear misses."""

from __future__ import annotations

import pytest

from service.testing.daemon import Topics, daemon_settings
from service.testing.model import event_doc
from tests.replay.helpers import Cli, run_daemon_over, settings_env

pytestmark = [pytest.mark.kafka]

LIVE = "00000000-0000-4000-8000-00000000a001"
GONE = "00000000-0000-4000-8000-00000000a002"


async def test_show_state_and_recent_events(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    docs = [
        event_doc(LIVE, expected=None, project="proj", user="usr", consumer_type="INSTANCE"),
        event_doc(LIVE, expected=1, project="proj2"),
        event_doc(LIVE, expected=1),  # stale: rejected generation_conflict
        event_doc(GONE, expected=None),
        event_doc(GONE, delete=True),
    ]
    settings = daemon_settings(kafka_bootstrap, database_url, topics)
    await run_daemon_over(settings, kafka_bootstrap, topics, docs)
    cli = Cli(settings_env(settings))

    doc = await cli.json("show", LIVE.upper())  # any spelling of the UUID
    assert doc["found"] is True and doc["consumer_uuid"] == LIVE
    assert (doc["generation"], doc["deleted"]) == (2, False)
    assert (doc["project_id"], doc["user_id"], doc["consumer_type"]) == ("proj2", "usr", "INSTANCE")
    assert doc["last_event_id"] == docs[1]["event_id"]
    outcomes = {
        e["event_id"]: (e["outcome"], e["reason"], e["generation_after"]) for e in doc["events"]
    }
    assert outcomes == {
        docs[0]["event_id"]: ("applied", None, 1),
        docs[1]["event_id"]: ("applied", None, 2),
        docs[2]["event_id"]: ("rejected", "generation_conflict", 2),
    }
    assert all(e["source"]["topic"] == topics.events for e in doc["events"])
    limited = await cli.json("show", LIVE, "--events", "1")
    assert len(limited["events"]) == 1

    gone = await cli.json("show", GONE)
    assert (gone["generation"], gone["deleted"]) == (2, True) and gone["deleted_at"]

    text = await cli("show", LIVE)
    assert text.exit_code == 0
    assert "generation_conflict" in text.stdout and "proj2" in text.stdout
    tomb = await cli("show", GONE)
    assert "tombstone" in tomb.stdout


async def test_show_unknown_and_malformed(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics
) -> None:
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics)
    await run_daemon_over(settings, kafka_bootstrap, topics, [])
    cli = Cli(settings_env(settings))
    unknown = "00000000-0000-4000-8000-0000000fffff"
    missing = await cli("show", unknown)
    assert missing.exit_code == 1
    assert f"no consumer {unknown}" in missing.stderr
    assert (await cli.json("show", unknown, code=1))["found"] is False
    malformed = await cli("show", "not-a-uuid")
    assert malformed.exit_code == 2 and "not a UUID" in malformed.stderr
