"""``OutcomeRecord.to_document``: the outcome record as a JSON document (plain JSON types,
timestamps as RFC 3339 text), with ``original_outcome`` only for a duplicate and
``state_after`` only when there is a consumer."""

from __future__ import annotations

import json
from typing import Any

from service.contract.models import OutcomeRecord

BASE = {
    "event_id": "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
    "consumer_uuid": "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80",
    "source": {"topic": "consumer-events", "partition": 3, "offset": 1207},
    "processed_at": "2024-05-01T12:00:01.204Z",
}


def record(**fields: Any) -> OutcomeRecord:
    """As a reader parses one (JSON: enums and timestamps arrive as text)."""
    return OutcomeRecord.model_validate_json(json.dumps(BASE | fields))


def test_the_document_is_plain_json() -> None:
    doc = record(outcome="applied", reason=None, generation_after=4).to_document()
    assert doc == {
        "schema_version": 1,
        "event_id": BASE["event_id"],
        "consumer_uuid": BASE["consumer_uuid"],
        "outcome": "applied",
        "reason": None,
        "message": None,
        "generation_after": 4,
        "source": {"topic": "consumer-events", "partition": 3, "offset": 1207},
        "processed_at": "2024-05-01T12:00:01.204000Z",
    }
    assert type(doc["outcome"]) is str and json.loads(json.dumps(doc)) == doc


def test_original_outcome_and_state_after_only_when_they_say_something() -> None:
    state = {"state": "live", "generation": 2, "project_id": "p", "user_id": "u"}
    duplicate = record(
        outcome="duplicate",
        reason=None,
        generation_after=2,
        original_outcome="applied",
        state_after=state | {"consumer_type": None},
    ).to_document()
    assert duplicate["original_outcome"] == "applied"
    assert duplicate["state_after"] == state | {"consumer_type": None}
    rejected = record(
        outcome="rejected", reason="generation_conflict", generation_after=2
    ).to_document()
    assert "original_outcome" not in rejected and "state_after" not in rejected
    assert rejected["reason"] == "generation_conflict"
