"""Hostile records in the topic, the dead-letter topic and an archive: the daemon
dead-letters them, and replay (every mode), archive and verify report and skip them.
Never a traceback; the good events around them are applied."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.testing.daemon import Topics, daemon_settings, running_daemon
from service.testing.database import consumer_state
from service.testing.kafka_io import produce_docs, produce_raw, read_all, wait_all_committed
from service.testing.model import Model, event_doc
from service.testing.polling import poll
from tests.replay.helpers import Cli, settings_env

pytestmark = [pytest.mark.kafka]

CONSUMERS = [f"0000000a-0000-4000-8000-{i:012d}" for i in range(1, 4)]  # a letter to upper-case
HUGE = b"9" * 4301


def _raw(doc: dict[str, Any], field: str, raw: bytes) -> bytes:
    doc = dict(doc, **{field: "@@RAW@@"})
    return json.dumps(doc).encode().replace(b'"@@RAW@@"', raw)


def _hostile() -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, reason): each would have crashed a reader or been applied before."""
    c = CONSUMERS[0]
    key = c.encode()
    return [
        (key, _raw(event_doc(c), "expected_generation", HUGE), "schema_violation"),
        (key, _raw(event_doc(c), "unknown", b"-" + HUGE), "schema_violation"),
        (key, _raw(event_doc(c), "schema_version", HUGE), "unsupported_version"),
        (key, _raw(event_doc(c), "expected_generation", b"1e400"), "schema_violation"),
        (None, json.dumps(event_doc(c, project="no-key")).encode(), "key_mismatch"),
        (c.upper().encode(), json.dumps(event_doc(c, project="upper")).encode(), "key_mismatch"),
        (CONSUMERS[1].encode(), json.dumps(event_doc(c, project="x")).encode(), "key_mismatch"),
    ]


async def _daemon_over_hostile(
    bootstrap: str, database_url: str, topics: Topics
) -> tuple[Any, Model, list[tuple[bytes | None, bytes, str]]]:
    creates = [event_doc(c, expected=None, project="p", user="u") for c in CONSUMERS]
    updates = [event_doc(c, expected=1, project="q") for c in CONSUMERS]
    hostile = _hostile()
    model = Model()
    for doc in creates + updates:
        model.apply(doc)
    settings = daemon_settings(bootstrap, database_url, topics)
    await produce_docs(bootstrap, topics.events, creates)
    await produce_raw(bootstrap, topics.events, [(k, v) for k, v, _ in hostile])
    await produce_docs(bootstrap, topics.events, updates)  # canaries after the hostile ones
    async with running_daemon(settings) as daemon:
        await poll(lambda: daemon.readiness.assigned > 0, 60, "the daemon assigned")
        await wait_all_committed(bootstrap, topics.group, topics.events, within=60)
        assert daemon.readiness.verdict()[0], "the daemon must stay alive and ready"
    assert await consumer_state(database_url) == model.state()
    return settings, model, hostile


def _by_reason(hostile: list[tuple[bytes | None, bytes, str]]) -> dict[str, int]:
    return dict(sorted(Counter(reason for _, _, reason in hostile).items()))


async def test_hostile_records_in_the_topic_are_dead_lettered_and_skipped_by_replay(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path: Path
) -> None:
    settings, model, hostile = await _daemon_over_hostile(kafka_bootstrap, database_url, topics)
    letters = await read_all(kafka_bootstrap, topics.dlq)
    assert sorted(dict(r.headers)["error.reason"].decode() for r in letters) == sorted(
        reason for _, _, reason in hostile
    )
    for letter in letters:
        headers = dict(letter.headers)
        assert b"9999" not in headers["error.message"]
        if letter.value is not None and HUGE in letter.value and b'"expected' in letter.value:
            assert headers["error.path"] == b"$.expected_generation"
    state = await consumer_state(database_url)
    cli = Cli(settings_env(settings))
    expected_invalid = _by_reason(hostile)

    for args in (["--dry-run"], []):
        result = await cli("replay", "--from-beginning", "--json", *args)
        assert result.exit_code == 1, result.stderr  # invalid records were found
        assert "Traceback" not in result.stderr
        doc = json.loads(result.stdout)
        assert doc["invalid_by_reason"] == expected_invalid
        assert doc["read"] == len(hostile) + 2 * len(CONSUMERS)
        assert doc["outcomes"]["duplicate"] == 2 * len(CONSUMERS)
        assert await consumer_state(database_url) == state

    dlq = await cli("replay", "--dlq", "--json")
    assert dlq.exit_code == 1 and "Traceback" not in dlq.stderr
    assert json.loads(dlq.stdout)["invalid_by_reason"] == expected_invalid

    verified = await cli.json("verify")
    assert verified["clean"] is True
    assert verified["rebuild"]["invalid_by_reason"] == expected_invalid

    archive = tmp_path / "events.jsonl"
    made = await cli("archive", "--output", str(archive))
    assert made.exit_code == 0, made.stderr
    lines = archive.read_text().splitlines()
    assert len(lines) == len(hostile) + 2 * len(CONSUMERS)
    inline = [line for line in lines if HUGE.decode() in line]
    assert len(inline) == 3  # the digits are kept as JSON, not base64
    assert all('"value_base64"' not in line for line in inline)
    for args in (["--dry-run"], []):
        replayed = await cli("replay", "--archive", str(archive), "--json", *args)
        assert replayed.exit_code == 1 and "Traceback" not in replayed.stderr
        assert json.loads(replayed.stdout)["invalid_by_reason"] == expected_invalid
    from_archive = await cli.json("verify", "--archive", str(archive))
    assert from_archive["clean"] is True
    assert from_archive["rebuild"]["invalid_by_reason"] == expected_invalid
    assert await consumer_state(database_url) == model.state()


async def test_a_hand_written_archive_with_huge_numbers_is_replayed_around_them(
    kafka_bootstrap: str, sqlite_url: str, topics: Topics, tmp_path: Path
) -> None:
    c = CONSUMERS[2]
    create = event_doc(c, expected=None, project="p", user="u")
    update = event_doc(c, expected=1, project="q")
    lines = [
        json.dumps({"partition": 0, "offset": 0, "key": c, "value": create}).encode(),
        b'{"partition": 0, "offset": 1, "key": "'
        + c.encode()
        + b'", "value": '
        + _raw(event_doc(c), "expected_generation", b"-" + HUGE)
        + b"}",
        b'{"partition": 0, "offset": 2, "key": "'
        + c.encode()
        + b'", "value": '
        + _raw(event_doc(c), "producer", b"1e99999")
        + b"}",
        json.dumps({"partition": 0, "offset": 3, "key": c, "value": update}).encode(),
    ]
    archive = tmp_path / "hand.jsonl"
    archive.write_bytes(b"\n".join(lines) + b"\n")
    settings = daemon_settings(kafka_bootstrap, sqlite_url, topics)
    cli = Cli(settings_env(settings))
    await cli("db", "upgrade")
    result = await cli("replay", "--archive", str(archive), "--json")
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    assert doc["invalid_by_reason"] == {"schema_violation": 2}
    assert doc["outcomes"]["applied"] == 2
    state = await consumer_state(sqlite_url)
    assert state[c][0] == 2

    bad_offset = tmp_path / "bad-offset.jsonl"
    bad_offset.write_bytes(b'{"partition": 0, "offset": ' + HUGE + b', "value": null}\n')
    refused = await cli("replay", "--archive", str(bad_offset))
    assert refused.exit_code != 0 and "Traceback" not in refused.stderr
    assert '"offset" must be an integer >= 0' in refused.stderr
