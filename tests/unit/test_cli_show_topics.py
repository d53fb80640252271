"""`consumergen show` on a real SQLite database (the state and the inbox rows as the
operator reads them, text and --json) and `consumergen topics create` over aiokafka's
admin client faked at its calls (tests/unit/test_kafka_topics.py): no broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from click.testing import CliRunner, Result

from service.cli import cli
from service.config import load_settings
from service.kafka import topics
from service.replay.records import to_archive_line
from service.store.migrate import upgrade
from tests.replay.fakes import consumer_id, delete_doc, record, upsert_doc
from tests.unit.test_kafka_topics import Admin, Broker

C1, C2 = consumer_id(1), consumer_id(2)


def cells(line: str) -> list[str]:
    """The words of a table row, without rich's borders."""
    return line.replace("│", " ").replace("┃", " ").split()


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"
    asyncio.run(upgrade(load_settings(database_url=url)))
    return {"CONSUMERGEN_DATABASE_URL": url, "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9"}


def replayed(env: dict[str, str], tmp_path: Path, docs: list[dict[str, Any]]) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("".join(to_archive_line(record(i, d)) + "\n" for i, d in enumerate(docs)))
    # One transaction per event: each inbox row has its own processed_at, newest last.
    result = invoke(env, "replay", "--archive", str(path), "--batch-size", "1")
    assert result.exit_code == 0, result.output


def history() -> list[dict[str, Any]]:
    return [
        upsert_doc(C1),
        upsert_doc(C1, project_id="p2", consumer_type="INSTANCE"),
        upsert_doc(C1, expected_generation=9),  # rejected: generation_conflict
        upsert_doc(C2),
        delete_doc(C2),
    ]


def test_show_as_json_is_the_state_and_the_latest_inbox_rows(
    env: dict[str, str], tmp_path: Path
) -> None:
    docs = history()
    replayed(env, tmp_path, docs)
    result = invoke(env, "show", C1, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    times = {k: doc.pop(k) for k in ("created_at", "updated_at")}
    assert all(t.endswith("Z") and "+00:00" not in t for t in times.values())
    events = doc.pop("events")
    assert doc == {
        "consumer_uuid": C1,
        "found": True,
        "generation": 2,
        "deleted": False,
        "project_id": "p2",
        "user_id": "u",
        "consumer_type": "INSTANCE",
        "last_event_id": docs[1]["event_id"],
        "deleted_at": None,
    }
    assert [e["event_id"] for e in events] == [
        docs[2]["event_id"],
        docs[1]["event_id"],
        docs[0]["event_id"],
    ]
    rejected = events[0]
    assert rejected["processed_at"].endswith("Z")
    del rejected["processed_at"]
    assert rejected == {
        "event_id": docs[2]["event_id"],
        "type": "consumer.upsert",
        "outcome": "rejected",
        "reason": "generation_conflict",
        "generation_after": 2,
        "attempts": 1,
        "source": {"topic": "events", "partition": 0, "offset": 2},
    }
    assert events[2]["reason"] is None and events[2]["generation_after"] == 1
    one = json.loads(invoke(env, "show", C1, "--json", "--events", "1").stdout)
    assert [e["event_id"] for e in one["events"]] == [docs[2]["event_id"]]
    none = json.loads(invoke(env, "show", C1, "--json", "--events", "0").stdout)
    assert none["events"] == [] and none["generation"] == 2


def test_show_as_tables(env: dict[str, str], tmp_path: Path) -> None:
    docs = history()
    replayed(env, tmp_path, docs)
    result = invoke(env, "show", C1.upper())
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"consumer {C1}" in out
    for field, value in (
        ("state", "live"),
        ("generation", "2"),
        ("project", "p2"),
        ("user", "u"),
        ("consumer type", "INSTANCE"),
        ("last event", docs[1]["event_id"]),
    ):
        assert any(cells(line) == [*field.split(), value] for line in out.splitlines()), field
    assert "last 3 processed events, newest first" in out
    assert "rejected (generation_conflict)" in out and "events/0@2" in out
    bare = invoke(env, "show", C1, "--events", "0")
    assert "no processed events in the inbox (pruned?)" in bare.stdout
    deleted = invoke(env, "show", C2)
    assert "deleted (tombstone since " in deleted.stdout
    assert any(cells(line) == ["consumer", "type", "T"] for line in deleted.stdout.splitlines())


def test_show_of_an_unknown_consumer_exits_1(env: dict[str, str]) -> None:
    result = invoke(env, "show", C1)
    assert result.exit_code == 1
    assert f"consumergen show: no consumer {C1} in the database" in result.stderr
    assert result.stdout == ""
    doc = json.loads(invoke(env, "show", C1, "--json").stdout)
    assert doc == {"consumer_uuid": C1, "found": False, "events": []}


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    found = Broker()
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", lambda **o: Admin(found, **o))
    return found


def test_topics_create_says_what_it_did_with_each_topic(broker: Broker) -> None:
    broker.limits["consumer-events"] = None
    env = {"CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "5"}
    result = invoke(
        env,
        "topics",
        "create",
        "--partitions",
        "4",
        "--replication-factor",
        "2",
        "--bootstrap-server",
        "kafka-a:9092",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "consumer-events: exists",
        "consumer-events.dlq: created",
        "consumer-events.replies: created",
    ]
    assert {(t.num_partitions, t.replication_factor) for t in broker.created} == {(4, 2)}
    assert broker.admins[0].options["bootstrap_servers"] == ["kafka-a:9092"]


def test_topics_create_without_a_broker_is_one_line_and_exit_1(broker: Broker) -> None:
    broker.fail = KafkaConnectionError("no route")
    result = invoke({}, "topics", "create")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "error: Kafka error: KafkaConnectionError: no route"
    assert result.stdout == ""
