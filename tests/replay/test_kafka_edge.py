"""replay, verify and archive over a topic holding a record the Kafka client cannot
decode (a header name that is not UTF-8) and an aborted transaction: the record is
reported (no traceback) and the rest is read; the aborted event is never seen."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from service.replay.records import from_archive_line
from service.store.migrate import upgrade
from service.testing.daemon import Topics, daemon_settings
from service.testing.database import consumer_state
from service.testing.model import event_doc
from tests.daemon.test_kafka_edge import produce_transactions
from tests.replay.helpers import Cli, settings_env
from tests.support import kcat

pytestmark = [pytest.mark.kafka]


def _consumer(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _record(doc: dict[str, Any], *headers: tuple[bytes, bytes]) -> kcat.KcatRecord:
    return kcat.KcatRecord(doc["consumer_uuid"].encode(), json.dumps(doc).encode(), headers)


async def test_replay_verify_archive_report_undecodable_and_skip_aborted(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics, tmp_path: Path
) -> None:
    docs = [event_doc(_consumer(n), expected=None, project="p", user="u") for n in range(1, 5)]
    hostile, aborted, committed = docs[1], docs[2], docs[3]
    good = [docs[0], committed]
    # Partition 0: good, hostile, good(on partition 1 below); then the transactions.
    await asyncio.to_thread(
        kcat.produce,
        kafka_bootstrap,
        topics.events,
        [_record(docs[0]), _record(hostile, (b"ok", b"1"), (b"\xc3\x28bad", b"2"))],
        partition=0,
    )
    await produce_transactions(kafka_bootstrap, topics.events, aborted, committed)
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics)
    await upgrade(settings)
    cli = Cli(settings_env(settings))

    dry = await cli.json("replay", "--from-beginning", "--dry-run", code=1)
    assert dry["read"] == 3  # two good, one undecodable; the aborted one is never read
    assert dry["invalid_by_reason"] == {"undecodable": 1}
    assert dry["outcomes"]["applied"] == 2

    applied = await cli("replay", "--from-beginning")
    assert applied.exit_code == 1
    assert "Traceback" not in applied.stderr + applied.stdout
    state = await consumer_state(sqlite_url)
    assert set(state) == {d["consumer_uuid"] for d in good}

    # The live state is what the topic says (the undecodable record is invalid for the
    # daemon too): verify is clean and its rebuild reports the record.
    report = await cli.json("verify")
    assert report["clean"] is True
    assert report["rebuild"]["invalid_by_reason"] == {"undecodable": 1}
    assert report["rebuild"]["read"] == 3  # not the aborted one

    output = tmp_path / "events.jsonl"
    archived = await cli("archive", "--from-beginning", "--output", str(output))
    assert archived.exit_code == 1
    assert "Traceback" not in archived.stderr
    assert "partition 0 offset 1: header #2 name is not UTF-8" in archived.stderr
    lines = [from_archive_line(line, topics.events) for line in output.read_text().splitlines()]
    values = [json.loads(r.value or b"") for r in lines]
    assert [v["event_id"] for v in values] == [d["event_id"] for d in good]
