"""`consumergen produce` over aiokafka's producer faked at its client API
(``service.testing.fake_aiokafka``, no broker): what it prints for each event sent, each
bad line and each refusal, in text and ``--json``, what reaches the topic, and its exit
codes.  ``tests/producer/test_produce_cli.py`` is the same against a real broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from click.testing import CliRunner, Result

import service.cli.produce as produce
import service.producer.client as client
from service.cli import cli
from service.contract.decode import decode_event
from service.domain.events import UNCONDITIONAL, EventType
from service.testing.fake_aiokafka import FakeCluster, Written, producer_class

CONSUMER = "00000000-0000-4000-8000-0000000000c1"
EVENT_ID = "00000000-0000-4000-8000-0000000000e1"
ENV = {
    "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "CONSUMERGEN_TOPIC": "events",
    "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "1",
}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    found = FakeCluster({"events": 3})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(found))
    yield found


def run(*args: str, input: bytes | str | None = None, env: dict[str, str] = ENV) -> Result:
    return CliRunner().invoke(cli, ["produce", *args], env=env, input=input)


def sent(cluster: FakeCluster) -> list[tuple[Written, Any]]:
    return [(w, decode_event(w.value or b"", max_bytes=1 << 20)) for w in cluster.written("events")]


def line(doc: dict[str, Any]) -> str:
    return json.dumps({"type": "consumer.upsert", "consumer_uuid": CONSUMER, **doc})


def test_one_event_from_options_is_sent_and_its_place_printed(cluster: FakeCluster) -> None:
    result = run(
        "--consumer-uuid",
        CONSUMER.upper(),
        "--expected-generation",
        " NULL ",
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
    [(written, event)] = sent(cluster)
    assert written.key == CONSUMER.encode()
    assert (event.type, event.consumer_uuid, event.expected_generation) == (
        EventType.UPSERT,
        CONSUMER,
        None,
    )
    assert (event.project_id, event.user_id, event.consumer_type, event.producer) == (
        "p1",
        "u1",
        "INSTANCE",
        "cli-test",
    )
    assert result.stdout == (
        f"sent {event.event_id} to events partition {written.partition} offset 0\n"
    )
    assert result.stderr == ""


def test_a_delete_and_an_unconditional_upsert_in_json(cluster: FakeCluster) -> None:
    deleted = run("--consumer-uuid", CONSUMER, "--delete", "--expected-generation", "4")
    plain = run("--consumer-uuid", CONSUMER, "--json")
    assert (deleted.exit_code, plain.exit_code) == (0, 0), deleted.output + plain.output
    (_, first), (second_record, second) = sent(cluster)
    assert (first.type, first.expected_generation, first.producer) == (EventType.DELETE, 4, None)
    assert (second.type, second.expected_generation) == (EventType.UPSERT, UNCONDITIONAL)
    assert json.loads(plain.stdout) == {
        "ok": True,
        "event_id": second.event_id,
        "topic": "events",
        "partition": second_record.partition,
        "offset": 1,
    }
    assert len(plain.stdout.splitlines()) == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_options_the_contract_refuses_are_a_usage_error_and_nothing_is_sent(
    cluster: FakeCluster, as_json: bool
) -> None:
    flags = ["--json"] if as_json else []
    result = run("--consumer-uuid", CONSUMER, "--consumer-type", "lower", *flags)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: invalid event, schema_violation at $.consumer_type: "
    ) and result.stderr.endswith(" (not sent)\n")
    assert len(result.stderr.splitlines()) == 1
    if as_json:
        document = json.loads(result.stdout)
        assert document.pop("message") in result.stderr
        assert document == {"ok": False, "reason": "schema_violation", "path": "$.consumer_type"}
    else:
        assert result.stdout == ""
    assert cluster.written("events") == []


def test_an_expected_generation_that_is_no_number_is_refused_by_the_contract(
    cluster: FakeCluster,
) -> None:
    result = run("--consumer-uuid", CONSUMER, "--expected-generation", "1.5")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: invalid event, schema_violation at $.expected_generation"
    )
    assert cluster.written("events") == []


def test_a_send_the_broker_refuses_is_one_line_and_exit_1(cluster: FakeCluster) -> None:
    cluster.refuse = lambda _: MessageSizeTooLargeError("too big for the broker")
    result = run("--consumer-uuid", CONSUMER)
    assert result.exit_code == 1
    [error] = result.stderr.splitlines()
    assert error.startswith("error: send failed: ") and "MessageSizeTooLargeError" in error
    assert result.stdout == ""
    refused = run("--consumer-uuid", CONSUMER, "--json")
    *_, (_, _, [record], _) = cluster.batches  # what the broker refused
    document = json.loads(refused.stdout)
    assert document.pop("event_id") == decode_event(record.value or b"", max_bytes=1 << 20).event_id
    assert refused.stderr == f"error: send failed: {document.pop('message')}\n"
    assert document == {"ok": False, "reason": "send_failed"}


def test_an_unreachable_broker_is_one_line_and_exit_1(cluster: FakeCluster) -> None:
    cluster.up = False
    for args in (["--consumer-uuid", CONSUMER], ["--file", "-"]):
        result = run(*args, input=line({}) + "\n")
        assert result.exit_code == 1, result.output
        [error] = result.stderr.splitlines()
        assert error.startswith("error: cannot connect the ") and "127.0.0.1:9" in error
        assert result.stdout == ""


def test_a_file_s_lines_are_sent_in_order_and_bad_ones_named(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        "\n".join(
            [
                line({"event_id": EVENT_ID, "expected_generation": None}),  # 1
                "{broken",  # 2
                "   ",  # 3 blank: skipped
                line({"expected_generation": 2}),  # 4
                line({"schema_version": 3}),  # 5
            ]
        )
        + "\r\n"
    )
    result = run("--file", str(path), "--producer", "from-file")
    assert result.exit_code == 1
    (w1, first), (w2, second) = sent(cluster)
    assert result.stdout.splitlines() == [
        f"line 1: sent {EVENT_ID} to events partition {w1.partition} offset {w1.offset}",
        f"line 4: sent {second.event_id} to events partition {w2.partition} offset {w2.offset}",
    ]
    assert (first.event_id, first.producer, second.expected_generation) == (
        EVENT_ID,
        "from-file",
        2,
    )
    errors = result.stderr.splitlines()
    assert [e.split(": ")[:2] for e in errors] == [
        ["error", "line 2"],
        ["error", "line 5"],
    ]
    assert errors[0].startswith("error: line 2: invalid event, not_json")
    assert errors[1].startswith("error: line 5: invalid event, unsupported_version")
    assert all(e.endswith("(not sent)") for e in errors)


def test_stdin_in_json_stops_at_the_first_bad_line_when_asked(cluster: FakeCluster) -> None:
    good = line({})
    stdin = "\n".join([good, '{"type": 1}', good]) + "\n"
    result = run("--file", "-", "--json", "--stop-on-error", input=stdin)
    assert result.exit_code == 1
    out = [json.loads(text) for text in result.stdout.splitlines()]
    [(written, event)] = sent(cluster)
    assert out[0] == {
        "line": 1,
        "ok": True,
        "event_id": event.event_id,
        "topic": "events",
        "partition": written.partition,
        "offset": 0,
    }
    message = out[1].pop("message")
    assert out[1] == {"line": 2, "ok": False, "reason": "schema_violation", "path": "$.type"}
    assert (
        result.stderr
        == f"error: line 2: invalid event, schema_violation at $.type: {message} (not sent)\n"
    )
    assert len(out) == 2


def test_without_stop_on_error_every_good_line_is_sent(cluster: FakeCluster) -> None:
    stdin = "\n".join([line({}), "not json", line({}), line({})]) + "\n"
    result = run("--file", "-", "--json", input=stdin)
    assert result.exit_code == 1
    out = [json.loads(text) for text in result.stdout.splitlines()]
    assert [(o["line"], o["ok"]) for o in out] == [(1, True), (2, False), (3, True), (4, True)]
    assert len(cluster.written("events")) == 3


def test_a_line_whose_bytes_break_the_decoder_is_that_line_s_fault(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise RecursionError("deep")

    monkeypatch.setattr(produce, "event_from_line", explode)
    result = run("--file", "-", input=line({}) + "\n")
    assert result.exit_code == 1
    [error] = result.stderr.splitlines()
    assert error.startswith("error: line 1: invalid event, ") and "RecursionError" in error
    assert cluster.written("events") == []


def test_sends_the_broker_fails_after_the_first_are_each_named(cluster: FakeCluster) -> None:
    """The broker takes the first line's event and fails the rest at delivery: each of
    those lines is named as a failed send, in order, and the exit code is 1."""
    calls = 0

    def down_on_second(_: Written) -> BaseException | None:
        nonlocal calls
        calls += 1
        return KafkaConnectionError("connection reset") if calls >= 2 else None

    cluster.refuse = down_on_second
    stdin = "\n".join([line({}), line({}), line({})]) + "\n"
    result = run("--file", "-", input=stdin)
    assert result.exit_code == 1
    assert [text.split(":")[0] for text in result.stdout.splitlines()] == ["line 1"]
    assert [e.split(": ")[1] for e in result.stderr.splitlines()] == ["line 2", "line 3"]
    assert all("send failed: " in e for e in result.stderr.splitlines())


def test_usage_errors_name_what_is_wrong(cluster: FakeCluster) -> None:
    cases = [
        ([], "give either --consumer-uuid (one event) or --file (JSONL)"),
        (["--consumer-uuid", CONSUMER, "--file", "-"], "give either --consumer-uuid"),
        (["--file", "-", "--project", "p"], "event options cannot be combined with --file"),
        (["--file", "-", "--delete"], "event options cannot be combined with --file"),
        (["--consumer-uuid", CONSUMER, "--timeout", "3"], "--timeout needs --wait"),
    ]
    for args, message in cases:
        result = run(*args, input="")
        assert result.exit_code == 2, args
        assert message in result.stderr.splitlines()[-1], (args, result.stderr)
    assert cluster.written("events") == []
