"""`consumergen produce --wait --json`: each outcome's object carries its reason and the
outcome it duplicates, and no state when the answer has none (over the stand-in daemon
of test_cli_produce_wait_fake.py, no broker)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError

import service.cli.waiting as waiting
from service.domain.outcomes import OutcomeKind, Reason
from tests.unit.test_cli_produce_wait_fake import (  # the same stand-in daemon
    Daemon,
    daemon,  # noqa: F401 (a fixture)
    event_ids,
    line,
    run,
)


def test_each_outcome_in_json_with_its_reason_and_original(daemon: Daemon) -> None:  # noqa: F811
    def decide(doc: dict[str, Any]) -> tuple[Any, ...] | None:
        if doc.get("expected_generation") == 7:
            return OutcomeKind.REJECTED, Reason.GENERATION_CONFLICT, None, 3, None
        return OutcomeKind.DUPLICATE, Reason.CONSUMER_EXISTS, OutcomeKind.REJECTED, None, None

    daemon.decide = decide
    stdin = line(expected_generation=7) + "\n" + line(expected_generation=9) + "\n"
    result = run("--file", "-", "--json", input=stdin)
    assert result.exit_code == 1
    rejected, duplicate = (json.loads(text) for text in result.stdout.splitlines())
    one, two = event_ids(daemon)
    assert rejected == {
        "line": 1,
        "ok": False,
        "event_id": one,
        "outcome": "rejected",
        "reason": "generation_conflict",
        "original_outcome": None,
        "generation_after": 3,
        "state_after": None,
    }
    assert duplicate == {
        "line": 2,
        "ok": False,
        "event_id": two,
        "outcome": "duplicate",
        "reason": "consumer_exists",
        "original_outcome": "rejected",
        "generation_after": None,
        "state_after": None,
    }


def test_a_refused_send_names_its_event_and_a_time_out_its_line(daemon: Daemon) -> None:  # noqa: F811
    daemon.refuse = lambda w: (
        MessageSizeTooLargeError("refused by the broker")
        if w.topic == "events" and orjson.loads(w.value or b"{}").get("producer") == "refuse-me"
        else None
    )
    daemon.decide = lambda doc: None  # no answer: the outcome times out
    stdin = line(producer="refuse-me") + "\n" + line(producer="silent") + "\n"
    result = run("--file", "-", "--json", "--timeout", "0.3", input=stdin)
    assert result.exit_code == 1
    refused, silent = (json.loads(text) for text in result.stdout.splitlines())
    [(_, _, [record], _)] = [batch for batch in daemon.batches if batch[3] is not None]
    assert refused["event_id"] == orjson.loads(record.value or b"{}")["event_id"]
    assert (refused["line"], refused["reason"]) == (1, "send_failed")
    [sent] = event_ids(daemon)
    assert (silent["line"], silent["ok"], silent["event_id"], silent["reason"]) == (
        2,
        False,
        sent,
        "timeout",
    )


def test_a_bad_first_line_still_fails_a_file_longer_than_the_window(
    daemon: Daemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting, "WINDOW", 2)
    result = run("--file", "-", input="{broken\n" + (line() + "\n") * 4)
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 4  # the four applied, reported in order
    assert result.stderr.startswith("error: line 1: invalid event, not_json")
