"""Dead-letter headers and outcome records are built valid against ``schemas/``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import pytest
from contract_schemas import DEAD_LETTER, OUTCOME, schema_accepts

from service.contract.decode import InvalidEvent, decode_event
from service.contract.records import (
    dead_letter_headers,
    invalid_event_headers,
    outcome_key,
    outcome_record,
    parse_dead_letter_headers,
    parse_outcome_record,
)

EVENT_ID = "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34"
CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
WHEN = datetime(2024, 5, 1, 12, 0, 1, 204000, tzinfo=UTC)


def as_object(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    return {name: value.decode("utf-8") for name, value in headers}


def test_invalid_event_headers_keep_originals_and_replace_ours() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(
            b'{"schema_version": 1, "type": "consumer.upsert", "event_id": 5}', max_bytes=1024
        )
    original = [
        ("content-type", b"application/json"),
        ("error.reason", b"stale"),
        ("trace", b"\x00\xff"),
    ]
    headers = invalid_event_headers(
        caught.value,
        original_headers=original,
        origin_topic="consumer-events",
        origin_partition=3,
        origin_offset=1207,
        failed_at=WHEN,
    )
    assert headers[:2] == [("content-type", b"application/json"), ("trace", b"\x00\xff")]
    names = [name for name, _ in headers]
    assert len(names) == len(set(names))
    errors = as_object(headers[2:])
    assert errors == {
        "error.class": "invalid",
        "error.reason": "schema_violation",
        "error.message": caught.value.message,
        "error.path": "$.event_id",
        "origin.topic": "consumer-events",
        "origin.partition": "3",
        "origin.offset": "1207",
        "attempts": "1",
        "first_failed_at": "2024-05-01T12:00:01.204Z",
        "failed_at": "2024-05-01T12:00:01.204Z",
    }
    assert schema_accepts(DEAD_LETTER, errors | {"content-type": "application/json"})
    parsed = parse_dead_letter_headers(headers)
    assert (parsed.error_reason, parsed.origin_offset, parsed.error_path) == (
        "schema_violation",
        "1207",
        "$.event_id",
    )


def test_failed_event_headers() -> None:
    headers = dead_letter_headers(
        [],
        error_class="failed",
        reason="cas_retries_exhausted",
        message="lost the race\n10 times",
        origin_topic="t",
        origin_partition=0,
        origin_offset=0,
        attempts=10,
        first_failed_at=WHEN,
        failed_at=WHEN + timedelta(seconds=5),
    )
    values = as_object(headers)
    assert values["error.message"] == "lost the race 10 times"
    assert values["attempts"] == "10"
    assert "error.path" not in values
    assert schema_accepts(DEAD_LETTER, values)


@pytest.mark.parametrize(
    "change",
    [
        {"error_class": "oops"},
        {"reason": "consumer_exists"},
        {"attempts": 0},
        {"origin_offset": -1},
    ],
)
def test_dead_letter_headers_refuse_what_the_schema_refuses(change: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "error_class": "invalid",
        "reason": "not_json",
        "message": "m",
        "origin_topic": "t",
        "origin_partition": 0,
        "origin_offset": 0,
        "attempts": 1,
        "first_failed_at": WHEN,
        "failed_at": WHEN,
    } | change
    with pytest.raises(ValueError, match="invalid dead-letter headers"):
        dead_letter_headers([], **arguments)
    as_headers = {
        "error.class": str(arguments["error_class"]),
        "error.reason": str(arguments["reason"]),
        "error.message": "m",
        "origin.topic": "t",
        "origin.partition": str(arguments["origin_partition"]),
        "origin.offset": str(arguments["origin_offset"]),
        "attempts": str(arguments["attempts"]),
        "first_failed_at": "2024-05-01T12:00:01.204Z",
        "failed_at": "2024-05-01T12:00:01.204Z",
    }
    assert not schema_accepts(DEAD_LETTER, as_headers)


class Kind(StrEnum):  # the apply engine has its own enums: strings with the same values
    APPLIED = "applied"
    DUPLICATE = "duplicate"


GOOD = [
    {"outcome": Kind.APPLIED, "reason": None, "generation_after": 1},
    {"outcome": "rejected", "reason": "generation_conflict", "generation_after": 4},
    {"outcome": "rejected", "reason": "consumer_not_found", "generation_after": None},
    {
        "outcome": Kind.DUPLICATE,
        "reason": None,
        "generation_after": 1,
        "original_outcome": Kind.APPLIED,
    },
    {
        "outcome": "invalid",
        "reason": "not_json",
        "generation_after": None,
        "event_id": None,
        "consumer_uuid": None,
    },
    {
        "outcome": "failed",
        "reason": "cas_retries_exhausted",
        "generation_after": None,
        "message": "10 attempts",
    },
]
BAD = [
    {"outcome": "applied", "reason": "consumer_exists", "generation_after": 1},
    {"outcome": "applied", "reason": None, "generation_after": None},
    {"outcome": "rejected", "reason": "not_json", "generation_after": None},
    {"outcome": "failed", "reason": "too_large", "generation_after": None},
    {"outcome": "duplicate", "reason": None, "generation_after": 1},
    {"outcome": "applied", "reason": None, "generation_after": 1, "original_outcome": "applied"},
    {"outcome": "exploded", "reason": None, "generation_after": 1},
    {"outcome": "applied", "reason": None, "generation_after": 1, "event_id": EVENT_ID.upper()},
]


def _record(fields: dict[str, Any]) -> bytes:
    arguments: dict[str, Any] = {
        "event_id": EVENT_ID,
        "consumer_uuid": CONSUMER,
        "source_topic": "consumer-events",
        "source_partition": 3,
        "source_offset": 1207,
        "processed_at": WHEN,
    } | fields
    return outcome_record(**arguments)


@pytest.mark.parametrize("fields", GOOD)
def test_outcome_records_match_the_schema(fields: dict[str, Any]) -> None:
    value = _record(fields)
    document = json.loads(value)
    assert schema_accepts(OUTCOME, document), document
    assert document["source"] == {"topic": "consumer-events", "partition": 3, "offset": 1207}
    assert document["processed_at"] == "2024-05-01T12:00:01.204Z"
    assert document["outcome"] == str(fields["outcome"])
    assert ("original_outcome" in document) == (fields["outcome"] == "duplicate")
    assert parse_outcome_record(value).outcome == fields["outcome"]


@pytest.mark.parametrize("fields", BAD)
def test_outcome_records_refuse_what_the_schema_refuses(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid outcome record"):
        _record(fields)
    document = {
        "schema_version": 1,
        "event_id": fields.get("event_id", EVENT_ID),
        "consumer_uuid": CONSUMER,
        "source": {"topic": "consumer-events", "partition": 3, "offset": 1207},
        "processed_at": "2024-05-01T12:00:01.204Z",
    } | {k: v for k, v in fields.items() if k != "event_id"}
    assert not schema_accepts(OUTCOME, document)


def test_outcome_key() -> None:
    assert outcome_key(EVENT_ID) == EVENT_ID.encode()
    assert outcome_key(None) is None


def _via_model(arguments: dict[str, Any]) -> bytes:
    """The reference: validate through the pydantic ``OutcomeRecord`` and dump it (what
    ``outcome_record`` did before it checked the rules itself, for speed)."""
    from service.contract.models import OutcomeRecord
    from service.contract.records import utc_timestamp

    record = OutcomeRecord.model_validate_json(
        json.dumps(
            {
                "event_id": arguments["event_id"],
                "consumer_uuid": arguments["consumer_uuid"],
                "outcome": str(arguments["outcome"]),
                "reason": None if arguments["reason"] is None else str(arguments["reason"]),
                "message": arguments.get("message"),
                "generation_after": arguments["generation_after"],
                "original_outcome": (
                    None
                    if arguments.get("original_outcome") is None
                    else str(arguments["original_outcome"])
                ),
                "source": {
                    "topic": arguments["source_topic"],
                    "partition": arguments["source_partition"],
                    "offset": arguments["source_offset"],
                },
                "processed_at": utc_timestamp(arguments["processed_at"]),
            }
        )
    )
    doc = record.to_document()
    doc["processed_at"] = utc_timestamp(record.processed_at)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_OUTCOME_VALUES = ["applied", "duplicate", "rejected", "invalid", "failed", "exploded"]
_REASON_VALUES = [
    None,
    "consumer_exists",
    "generation_conflict",
    "consumer_not_found",
    "event_id_reused",
    "not_json",
    "too_large",
    "cas_retries_exhausted",
    "bogus",
]


@pytest.mark.parametrize("outcome", _OUTCOME_VALUES)
@pytest.mark.parametrize("reason", _REASON_VALUES)
@pytest.mark.parametrize("original", [None, "applied", "rejected", "duplicate"])
@pytest.mark.parametrize("generation", [None, 0, 7, -1, True])
def test_outcome_record_decides_like_the_pydantic_model(
    outcome: str, reason: str | None, original: str | None, generation: Any
) -> None:
    arguments: dict[str, Any] = {
        "event_id": EVENT_ID,
        "consumer_uuid": CONSUMER,
        "outcome": outcome,
        "reason": reason,
        "generation_after": generation,
        "original_outcome": original,
        "source_topic": "consumer-events",
        "source_partition": 3,
        "source_offset": 1207,
        "processed_at": WHEN,
    }
    try:
        expected: bytes | None = _via_model(arguments)
    except ValueError:  # pydantic's ValidationError is a ValueError
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match="invalid outcome record"):
            outcome_record(**arguments)
    else:
        assert outcome_record(**arguments) == expected


@pytest.mark.parametrize(
    "change",
    [
        {"event_id": None, "consumer_uuid": None},
        {"event_id": EVENT_ID.upper()},
        {"consumer_uuid": "not-a-uuid"},
        {"source_topic": ""},
        {"source_partition": -1},
        {"source_offset": True},
        {"message": "  two\nlines  "},
        {"message": "x" * 600},
        {"message": "\u00e9t\u00e9 \ud83d\ude00"},
        {"processed_at": datetime(1969, 12, 31, 23, 0, tzinfo=UTC)},
        {"processed_at": datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))},
    ],
)
def test_outcome_record_fields_decide_like_the_pydantic_model(change: dict[str, Any]) -> None:
    from service.contract.records import _bounded

    arguments: dict[str, Any] = {
        "event_id": EVENT_ID,
        "consumer_uuid": CONSUMER,
        "outcome": "rejected",
        "reason": "generation_conflict",
        "generation_after": 3,
        "source_topic": "consumer-events",
        "source_partition": 3,
        "source_offset": 1207,
        "processed_at": WHEN,
    } | change
    reference = dict(arguments)
    if reference.get("message") is not None:
        reference["message"] = _bounded(reference["message"])
    try:
        expected: bytes | None = _via_model(reference)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match="invalid outcome record"):
            outcome_record(**arguments)
    else:
        assert outcome_record(**arguments) == expected
        assert schema_accepts(OUTCOME, json.loads(expected))


@pytest.mark.parametrize("deleted", [False, True])
@pytest.mark.parametrize("consumer_type", [None, "INSTANCE"])
def test_outcome_records_carry_the_state_after(deleted: bool, consumer_type: str | None) -> None:
    from service.contract.state import state_from_document
    from service.domain.consumer import ConsumerState

    state = ConsumerState(
        uuid=CONSUMER,
        generation=4,
        deleted=deleted,
        project_id="p-1",
        user_id="u-1",
        consumer_type=consumer_type,
        last_event_id=EVENT_ID,
    )
    without = _record({"outcome": "applied", "reason": None, "generation_after": 4})
    value = _record(
        {"outcome": "applied", "reason": None, "generation_after": 4, "state_after": state}
    )
    document = json.loads(value)
    assert schema_accepts(OUTCOME, document), document
    # Additive: the old fields are byte for byte what they were, the new one comes last.
    assert value.startswith(without[:-1]) and list(document)[-1] == "state_after"
    assert document["state_after"] == {
        "state": "deleted" if deleted else "live",
        "generation": 4,
        "project_id": "p-1",
        "user_id": "u-1",
        "consumer_type": consumer_type,
    }
    parsed = parse_outcome_record(value)
    assert parsed.state_after is not None and parsed.state_after.generation == 4
    assert parsed.to_document()["state_after"] == document["state_after"]
    back = state_from_document(CONSUMER, document["state_after"])
    assert (back.deleted, back.generation, back.consumer_type) == (deleted, 4, consumer_type)
    # An old reader's view: the record without state_after is still a valid record.
    del document["state_after"]
    assert schema_accepts(OUTCOME, document)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("m" * 500, "m" * 500),  # the longest kept whole
        ("m" * 501, "m" * 499 + "…"),  # cut to 500 characters, the cut said
        ("a\tb\n\n" + "c" * 600, ("a b " + "c" * 600)[:499] + "…"),  # on one line first
    ],
)
def test_a_dead_letter_s_message_is_at_most_500_characters_on_one_line(
    message: str, expected: str
) -> None:
    headers = dead_letter_headers(
        [],
        error_class="failed",
        reason="cas_retries_exhausted",
        message=message,
        origin_topic="t",
        origin_partition=0,
        origin_offset=0,
        attempts=3,
        first_failed_at=WHEN,
        failed_at=WHEN,
    )
    assert as_object(headers)["error.message"] == expected
    assert len(expected) <= 500
