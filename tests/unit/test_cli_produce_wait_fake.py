"""`consumergen produce --wait` over aiokafka's producer and reply consumer faked at their
client API (``service.testing.fake_aiokafka``), with a stand-in for the daemon that
answers each request on the partition it names: each event's outcome printed in input
order (text and ``--json``), every outcome but applied named on stderr, exit 0 only when
all were applied.  ``tests/producer/test_produce_wait_cli.py`` is the same against a real
broker and daemon."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from click.testing import CliRunner, Result

import service.cli.waiting as waiting
import service.producer.client as client
import service.producer.replies as replies
from service.cli import cli
from service.contract.records import outcome_record
from service.contract.replies import CORRELATION_HEADER, reply_route
from service.domain.consumer import ConsumerState
from service.domain.outcomes import OutcomeKind, Reason
from service.testing.fake_aiokafka import FakeCluster, Written, consumer_class, producer_class

CONSUMER = "00000000-0000-4000-8000-0000000000c1"
ENV = {
    "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "CONSUMERGEN_TOPIC": "events",
    "CONSUMERGEN_REQUEST_TIMEOUT_SECONDS": "1",
}

#: What the stand-in daemon makes of an event document: (outcome, reason, original,
#: generation after, state after); None: no answer at all.
Decide = Callable[[dict[str, Any]], tuple[Any, ...] | None]


def applied(doc: dict[str, Any]) -> tuple[Any, ...]:
    state = ConsumerState(doc["consumer_uuid"], 1, False, "p", "u", "VM", doc["event_id"])
    return OutcomeKind.APPLIED, None, None, 1, state


@dataclass
class Daemon(FakeCluster):
    """The cluster, and the daemon's part: an outcome for each request as it is stored."""

    decide: Decide = applied

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> Written:
        stored = super().append(topic, partition, key, value, headers)
        route = reply_route(headers, "events.replies") if topic == "events" else None
        if route is not None:
            doc = orjson.loads(value or b"{}")
            decided = self.decide(doc)
            if decided is not None:
                kind, reason, original, generation, state = decided
                answer = outcome_record(
                    event_id=doc["event_id"],
                    consumer_uuid=doc["consumer_uuid"],
                    outcome=kind,
                    reason=reason,
                    original_outcome=original,
                    generation_after=generation,
                    state_after=state,
                    source_topic=topic,
                    source_partition=partition,
                    source_offset=stored.offset,
                )
                super().append(
                    route.topic,
                    route.partition,
                    b"k",
                    answer,
                    [(CORRELATION_HEADER, route.correlation)],
                )
        return stored


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    found = Daemon({"events": 3, "events.replies": 2})
    monkeypatch.setattr(client, "AIOKafkaProducer", producer_class(found))
    monkeypatch.setattr(replies, "AIOKafkaConsumer", consumer_class(found))
    yield found


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["produce", "--wait", *args], env=ENV, input=input)


def line(**doc: Any) -> str:
    return json.dumps({"type": "consumer.upsert", "consumer_uuid": CONSUMER, **doc})


def event_ids(daemon: Daemon) -> list[str]:
    return [orjson.loads(w.value or b"{}")["event_id"] for w in daemon.written("events")]


def test_an_applied_event_prints_its_generation_and_exits_0(daemon: Daemon) -> None:
    result = run("--consumer-uuid", CONSUMER, "--project", "p")
    assert result.exit_code == 0, result.output
    [event_id] = event_ids(daemon)
    assert result.stdout == f"{event_id}: applied (generation 1)\n"
    assert result.stderr == ""


def test_the_outcome_in_json_carries_the_state_after(daemon: Daemon) -> None:
    result = run("--consumer-uuid", CONSUMER, "--json")
    assert result.exit_code == 0, result.output
    [event_id] = event_ids(daemon)
    assert json.loads(result.stdout) == {
        "ok": True,
        "event_id": event_id,
        "outcome": "applied",
        "reason": None,
        "original_outcome": None,
        "generation_after": 1,
        "state_after": {
            "state": "live",
            "generation": 1,
            "project_id": "p",
            "user_id": "u",
            "consumer_type": "VM",
        },
    }


def test_each_outcome_of_a_file_in_order_and_every_other_one_named(daemon: Daemon) -> None:
    def decide(doc: dict[str, Any]) -> tuple[Any, ...] | None:
        match doc.get("expected_generation"):
            case 7:
                return OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, None, 3, None
            case 8:
                return OutcomeKind.DUPLICATE, None, OutcomeKind.APPLIED, 2, None
            case 9:
                return (
                    OutcomeKind.DUPLICATE,
                    Reason.CONSUMER_EXISTS,
                    OutcomeKind.REJECTED,
                    None,
                    None,
                )
        return OutcomeKind.APPLIED, None, None, 1, None

    daemon.decide = decide
    stdin = "\n".join(
        [
            line(expected_generation=None),  # 1 applied
            line(expected_generation=7),  # 2 rejected
            "{broken",  # 3 invalid, not sent
            "",  # 4 blank: skipped
            line(expected_generation=8),  # 5 duplicate of applied: ok
            line(expected_generation=9),  # 6 duplicate of a rejection: not ok
        ]
    )
    result = run("--file", "-", input=stdin + "\n")
    assert result.exit_code == 1
    one, two, five, six = event_ids(daemon)
    assert result.stdout.splitlines() == [
        f"line 1: {one}: applied (generation 1)",
        f"line 2: {two}: rejected: generation_conflict (generation 3)",
        f"line 5: {five}: duplicate of applied (generation 2)",
        f"line 6: {six}: duplicate of rejected: consumer_exists",
    ]
    errors = result.stderr.splitlines()
    assert errors[0] == f"error: line 2: event {two} rejected: generation_conflict"
    assert errors[1].startswith("error: line 3: invalid event, not_json")
    assert errors[1].endswith("(not sent)")
    assert errors[2:] == [f"error: line 6: event {six} duplicate of rejected: consumer_exists"]


def test_a_file_in_json_one_object_per_line_and_stop_on_error(daemon: Daemon) -> None:
    stdin = "\n".join([line(), '{"type": 1}', line()]) + "\n"
    result = run("--file", "-", "--json", "--stop-on-error", input=stdin)
    assert result.exit_code == 1
    [sent] = event_ids(daemon)
    first, second = (json.loads(text) for text in result.stdout.splitlines())
    assert (first["line"], first["ok"], first["event_id"], first["outcome"]) == (
        1,
        True,
        sent,
        "applied",
    )
    assert second == {
        "line": 2,
        "ok": False,
        "event_id": None,
        "reason": "schema_violation",
        "message": second["message"],
    }
    assert second["message"].startswith("invalid event, schema_violation at $.type")
    assert result.stderr == f"error: line 2: {second['message']}\n"


def test_no_outcome_in_time_is_named_with_where_the_event_is(daemon: Daemon) -> None:
    daemon.decide = lambda _: None
    result = run("--consumer-uuid", CONSUMER, "--timeout", "0.2", "--json")
    assert result.exit_code == 1
    [written] = daemon.written("events")
    [event_id] = event_ids(daemon)
    document = json.loads(result.stdout)
    message = (
        f"no outcome for event {event_id} within 0.2 s; it is on events[{written.partition}] "
        "at offset 0 and may still be applied later (is the daemon running?)"
    )
    assert document == {
        "ok": False,
        "event_id": event_id,
        "reason": "timeout",
        "message": message,
    }
    assert result.stderr == f"error: {message}\n"


def test_options_the_contract_refuses_are_reported_and_nothing_is_sent(daemon: Daemon) -> None:
    result = run("--consumer-uuid", CONSUMER, "--consumer-type", "lower")
    assert result.exit_code == 1
    assert result.stdout == ""
    [error] = result.stderr.splitlines()
    assert error.startswith("error: invalid event, schema_violation at $.consumer_type")
    assert error.endswith("(not sent)")
    assert daemon.written("events") == []


def test_a_send_the_broker_refuses_is_named_and_the_file_goes_on(daemon: Daemon) -> None:
    daemon.refuse = lambda w: (
        MessageSizeTooLargeError("refused by the broker")
        if w.topic == "events" and orjson.loads(w.value or b"{}").get("producer") == "refuse-me"
        else None
    )
    stdin = "\n".join([line(producer="refuse-me"), line()]) + "\n"
    result = run("--file", "-", "--json", input=stdin)
    assert result.exit_code == 1
    refused, accepted = (json.loads(text) for text in result.stdout.splitlines())
    [sent] = event_ids(daemon)
    assert (refused["line"], refused["ok"], refused["reason"]) == (1, False, "send_failed")
    assert refused["message"].startswith("send failed: ")
    assert refused["event_id"] != sent
    assert (accepted["line"], accepted["event_id"], accepted["outcome"]) == (2, sent, "applied")
    assert result.stderr == f"error: line 1: {refused['message']}\n"


def test_more_events_than_the_window_are_all_reported_in_order(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more events than the outcomes awaited at once, every outcome is still
    reported, in input order."""
    monkeypatch.setattr(waiting, "WINDOW", 2)
    stdin = "".join(line(producer=f"n{i}") + "\n" for i in range(5))
    result = run("--file", "-", input=stdin)
    assert result.exit_code == 0, result.output
    ids = event_ids(daemon)
    assert result.stdout.splitlines() == [
        f"line {n}: {event_id}: applied (generation 1)" for n, event_id in enumerate(ids, 1)
    ]
