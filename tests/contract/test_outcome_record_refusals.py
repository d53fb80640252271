"""What ``outcome_record`` says when the daemon asks it for a record the outcome schema
forbids: a bug of the caller, which stops the daemon loudly, so the one line it leaves
must say which rule the record broke (``test_records.py`` holds *which* records are
refused, against the schema and the pydantic model; this holds what each refusal says).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.contract.records import outcome_record

EVENT_ID = "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34"
CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"


def arguments(**change: Any) -> dict[str, Any]:
    return {
        "event_id": EVENT_ID,
        "consumer_uuid": CONSUMER,
        "outcome": "rejected",
        "reason": "generation_conflict",
        "generation_after": 3,
        "source_topic": "consumer-events",
        "source_partition": 3,
        "source_offset": 1207,
        "processed_at": datetime(2024, 5, 1, tzinfo=UTC),
    } | change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"event_id": EVENT_ID.upper()}, "event_id is not a canonical UUID"),
        ({"consumer_uuid": "not-a-uuid"}, "consumer_uuid is not a canonical UUID"),
        ({"consumer_uuid": 5}, "consumer_uuid is not a canonical UUID"),
        ({"outcome": "exploded"}, "unknown outcome 'exploded'"),
        ({"reason": "bogus"}, "unknown reason 'bogus'"),
        ({"generation_after": -1}, "generation_after must be an integer >= 0"),
        ({"generation_after": True}, "generation_after must be an integer >= 0"),
        (
            {"outcome": "applied", "reason": "consumer_exists"},
            "applied needs reason null and a generation_after",
        ),
        (
            {"outcome": "applied", "reason": None, "generation_after": None},
            "applied needs reason null and a generation_after",
        ),
        ({"reason": "not_json"}, "reason 'not_json' does not fit outcome rejected"),
        ({"reason": None}, "reason None does not fit outcome rejected"),
        ({"original_outcome": "duplicate"}, "unknown original_outcome 'duplicate'"),
        (
            {"original_outcome": "applied"},
            "original_outcome is required for duplicate and only there",
        ),
        (
            {"outcome": "duplicate", "reason": None},
            "original_outcome is required for duplicate and only there",
        ),
        ({"source_topic": ""}, "source.topic must be a non-empty string"),
        (
            {"source_partition": -1},
            "source.partition and source.offset must be integers >= 0",
        ),
        (
            {"source_offset": -1},
            "source.partition and source.offset must be integers >= 0",
        ),
        (
            {"processed_at": datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)},
            "processed_at must be in the years 1970-2999",
        ),
        (
            {"processed_at": datetime(3000, 1, 1, tzinfo=UTC)},
            "processed_at must be in the years 1970-2999",
        ),
    ],
)
def test_a_refused_outcome_record_names_the_rule_it_broke(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError) as caught:
        outcome_record(**arguments(**change))
    assert str(caught.value) == f"invalid outcome record: {problem}"


@pytest.mark.parametrize(
    "moment",
    [datetime(1970, 1, 1, tzinfo=UTC), datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)],
)
def test_the_first_and_last_years_are_allowed(moment: datetime) -> None:
    assert outcome_record(**arguments(processed_at=moment)).startswith(b"{")
