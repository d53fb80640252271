"""`consumergen produce --wait --json`: each outcome's object carries its reason and the
outcome it duplicates, and no state when the answer has none (over the stand-in daemon
of test_cli_produce_wait_fake.py, no broker)."""

from __future__ import annotations

import json
from typing import Any

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
