"""`consumergen produce` and `consumergen topics create` against a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner, Result
from kafka_tools import Record, read_all, unique

from service.cli import cli
from service.contract.decode import decode_event
from service.domain.events import UNCONDITIONAL, EventType
from service.embedded.process import free_port

pytestmark = pytest.mark.kafka


def run(env: dict[str, str], *args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


@pytest.fixture
def env(kafka_bootstrap: str) -> dict[str, str]:
    """Settings for a fresh events topic, created with `topics create` itself."""
    topic = unique("cli")
    values = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CONSUMERGEN_TOPIC": topic,
        "CONSUMERGEN_DLQ_TOPIC": topic + ".dlq",
        "CONSUMERGEN_TOPIC_PARTITIONS": "3",
        "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "10",
    }
    result = run(values, "topics", "create")
    assert result.exit_code == 0, result.output
    return values


def records(env: dict[str, str], expected: int) -> list[Record]:
    bootstrap, topic = env["CONSUMERGEN_BOOTSTRAP_SERVERS"], env["CONSUMERGEN_TOPIC"]
    return list(asyncio.run(read_all(bootstrap, topic, expected)))


def test_topics_create_is_idempotent(kafka_bootstrap: str) -> None:
    topic = unique("adm")
    values = {
        "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CONSUMERGEN_TOPIC": topic,
        "CONSUMERGEN_DLQ_TOPIC": topic + ".dlq",
        "CONSUMERGEN_OUTCOMES_TOPIC": topic + ".outcomes",
    }
    first = run(values, "topics", "create", "--partitions", "4", "--replication-factor", "1")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [
        f"{topic}: created",
        f"{topic}.dlq: created",
        f"{topic}.outcomes: created",
        f"{topic}.replies: created",  # the default reply topic: produce --wait works
    ]
    again = run(values, "topics", "create", "--partitions", "2")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [
        f"{topic}: exists",
        f"{topic}.dlq: exists",
        f"{topic}.outcomes: exists",
        f"{topic}.replies: exists",
    ]

    async def partitions() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            (description,) = await admin.describe_topics([topic])
            return len(description["partitions"])
        finally:
            await admin.close()

    assert asyncio.run(partitions()) == 4  # the second run did not change it


def test_single_event_round_trip(env: dict[str, str]) -> None:
    consumer = str(uuid.uuid4())
    result = run(
        env,
        "produce",
        "--consumer-uuid",
        consumer,
        "--expected-generation",
        "null",
        "--project",
        "p1",
        "--user",
        "u1",
        "--consumer-type",
        "INSTANCE",
        "--producer",
        "cli-test",
    )
    assert result.exit_code == 0, result.output
    deleted = run(
        env, "produce", "--consumer-uuid", consumer, "--delete", "--expected-generation", "1"
    )
    assert deleted.exit_code == 0, deleted.output
    plain = run(env, "produce", "--consumer-uuid", consumer, "--json")
    assert plain.exit_code == 0, plain.output
    line = result.stdout.strip()
    assert line.startswith("sent ") and f"to {env['CONSUMERGEN_TOPIC']} partition " in line
    event_id = line.split()[1]
    found = records(env, 3)
    first, second, third = (decode_event(r.value, max_bytes=1 << 20) for r in found)
    assert all(r.key == consumer.encode() for r in found)
    assert (first.event_id, first.type, first.expected_generation) == (
        event_id,
        EventType.UPSERT,
        None,
    )
    assert (first.project_id, first.user_id, first.consumer_type, first.producer) == (
        "p1",
        "u1",
        "INSTANCE",
        "cli-test",
    )
    assert (second.type, second.expected_generation) == (EventType.DELETE, 1)
    assert third.expected_generation is UNCONDITIONAL
    machine = json.loads(plain.stdout)
    assert machine == {
        "ok": True,
        "event_id": third.event_id,
        "topic": env["CONSUMERGEN_TOPIC"],
        "partition": found[2].partition,
        "offset": 2,
    }


@pytest.mark.parametrize(
    ("args", "path"),
    [
        # A malformed --consumer-uuid is refused by click, before any event is made
        # (tests/unit/test_cli_exit_codes.py).
        (["--expected-generation", "abc"], "$.expected_generation"),
        (["--expected-generation", "-1"], "$.expected_generation"),
        (["--consumer-type", "lower"], "$.consumer_type"),
        (["--delete", "--project", "p"], "$.project_id"),
    ],
)
def test_single_event_invalid_options(env: dict[str, str], args: list[str], path: str) -> None:
    if "--consumer-uuid" not in args:
        args = ["--consumer-uuid", str(uuid.uuid4()), *args]
    result = run(env, "produce", *args)
    assert result.exit_code == 2  # options are arguments: a bad one is a usage error
    assert result.stdout == ""
    assert (
        result.stderr
        == f"error: invalid event, schema_violation at {path}: " + (result.stderr.split(": ", 2)[2])
    )
    assert len(result.stderr.splitlines()) == 1


def test_file_with_every_kind_of_bad_line(env: dict[str, str], tmp_path: Path) -> None:
    env = env | {"CONSUMERGEN_MAX_EVENT_BYTES": "1024"}
    consumer = str(uuid.uuid4())
    given_id = str(uuid.uuid4())
    good = {"type": "consumer.upsert", "consumer_uuid": consumer}
    lines = [
        json.dumps(good | {"event_id": given_id, "expected_generation": None}).encode(),  # 1
        b"{broken",  # 2 not_json
        json.dumps(good).encode().replace(b"consumer.upsert", b"consumer.upsert\xff"),  # 3
        json.dumps(good | {"schema_version": 3}).encode(),  # 4 unsupported_version
        json.dumps(good | {"expected_generation": "1"}).encode(),  # 5 schema_violation
        b"",  # 6 blank: skipped
        json.dumps(good | {"producer": "x" * 200, "project_id": "é" * 255}).encode()
        + b" " * 600,  # 7 too_large
        json.dumps(good | {"expected_generation": 1}).encode(),  # 8
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run(env, "produce", "--file", str(path))
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(",")[0] for e in errors] == [
        "error: line 2: invalid event",
        "error: line 3: invalid event",
        "error: line 4: invalid event",
        "error: line 5: invalid event",
        "error: line 7: invalid event",
    ]
    assert [e.split(", ")[1].split(":")[0].split(" at ")[0] for e in errors] == [
        "not_json",
        "not_utf8",
        "unsupported_version",
        "schema_violation",
        "too_large",
    ]
    assert "schema_violation at $.expected_generation" in errors[3]
    assert all(e.endswith("(not sent)") for e in errors)
    sent = result.stdout.splitlines()
    assert [s.split(":")[0] for s in sent] == ["line 1", "line 8"]
    assert sent[0].split()[3] == given_id  # an event_id in the file is kept
    found = [decode_event(r.value, max_bytes=1024) for r in records(env, 2)]
    assert len(found) == 2
    assert [e.expected_generation for e in found] == [None, 1]
    assert found[0].event_id == given_id


def test_stop_on_error_stops_at_the_first_bad_line(env: dict[str, str]) -> None:
    consumer = str(uuid.uuid4())
    good = json.dumps({"type": "consumer.upsert", "consumer_uuid": consumer})
    stdin = "\n".join([good, good, '{"type": 1}', good, good]) + "\n"
    result = run(env, "produce", "--file", "-", "--stop-on-error", "--json", input=stdin)
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(o["line"], o["ok"]) for o in out] == [(1, True), (2, True), (3, False)]
    assert out[2]["reason"] == "schema_violation"
    assert out[2]["path"] == "$.type"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]]
    assert errors[0].startswith("error: line 3: invalid event, schema_violation at $.type")
    assert len(records(env, 2)) == 2


def test_stdin_json_output_in_line_order(env: dict[str, str]) -> None:
    consumers = [str(uuid.uuid4()) for _ in range(5)]
    stdin = "".join(
        json.dumps({"type": "consumer.upsert", "consumer_uuid": c, "producer": "p"}) + "\n"
        for c in consumers * 4
    )
    stdin = stdin.replace("\n", "\nnot json\n", 1)  # line 2 is bad, the rest still sent
    result = run(env, "produce", "--file", "-", "--json", input=stdin)
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["line"] for o in out] == list(range(1, 22))
    assert [o["ok"] for o in out].count(False) == 1 and out[1]["reason"] == "not_json"
    by_consumer: dict[str, set[int]] = {}
    for record in records(env, 20):
        event = decode_event(record.value, max_bytes=1 << 20)
        by_consumer.setdefault(event.consumer_uuid, set()).add(record.partition)
    assert sorted(by_consumer) == sorted(consumers)
    assert all(len(partitions) == 1 for partitions in by_consumer.values())


def test_usage_errors(env: dict[str, str]) -> None:
    neither = run(env, "produce")
    both = run(env, "produce", "--consumer-uuid", str(uuid.uuid4()), "--file", "-", input="")
    mixed = run(env, "produce", "--file", "-", "--delete", input="")
    for result in (neither, both, mixed):
        assert result.exit_code == 2
        assert "Error:" in result.stderr


def test_absent_broker_fails_fast_in_a_real_process() -> None:
    port = free_port()
    environ = {
        **os.environ,
        "CONSUMERGEN_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "2",
    }
    environ.pop("CONSUMERGEN_TEST_BOOTSTRAP_SERVERS", None)
    binary = Path(sys.executable).with_name("consumergen")
    started = time.monotonic()
    for args in (["produce", "--consumer-uuid", str(uuid.uuid4())], ["topics", "create"]):
        done = subprocess.run(
            [str(binary), *args], env=environ, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1, done.stderr
        # aiokafka may log its own connection warning first; ours is one clear line.
        (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert error.startswith("error: cannot connect the ")
        # A refused connection is not a timeout: the message names the server and the
        # refusal, and claims no "within N s" it did not wait (issue 15's finding).
        assert f"to Kafka at 127.0.0.1:{port}: " in error
        assert "within" not in error
        assert "Traceback" not in done.stderr
        assert "Unclosed" not in done.stderr
    assert time.monotonic() - started < 20


def test_file_with_huge_numbers_reports_the_lines_and_sends_the_rest(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Numbers Python cannot hold (4,301 digits, 1e400) are schema violations of their
    line, reported with the line number; the good lines around them are sent."""
    consumer = str(uuid.uuid4())
    good = {"type": "consumer.upsert", "consumer_uuid": consumer}
    huge = b"9" * 4301
    lines = [
        json.dumps(good | {"expected_generation": None}).encode(),  # 1
        json.dumps(good).encode()[:-1] + b', "expected_generation": ' + huge + b"}",  # 2
        json.dumps(good | {"expected_generation": 1}).encode(),  # 3
        json.dumps(good).encode()[:-1] + b', "schema_version": -' + huge + b"}",  # 4
        json.dumps(good).encode()[:-1] + b', "expected_generation": 1e400}',  # 5
        json.dumps(good | {"expected_generation": 2}).encode(),  # 6
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run(env, "produce", "--file", str(path))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: line 2: invalid event, schema_violation at $.expected_generation: "
        "a number far too large for this field (not sent)",
        "error: line 4: invalid event, unsupported_version at $.schema_version: "
        "this schema_version is not supported (this service knows 1) (not sent)",
        "error: line 5: invalid event, schema_violation at $.expected_generation: "
        "a number far too large for this field (not sent)",
    ]
    assert "9999" not in result.stderr  # the value is never quoted
    sent = result.stdout.splitlines()
    assert [s.split(":")[0] for s in sent] == ["line 1", "line 3", "line 6"]
    found = [decode_event(r.value, max_bytes=1 << 20) for r in records(env, 3)]
    assert [e.expected_generation for e in found] == [None, 1, 2]
