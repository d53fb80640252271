"""What the record boundary (``admit``) tells the dead-letter topic's reader about a key
mismatch or an event the apply rules refuse: the reason, and the message that goes into
the dead letter's ``error.message``, word for word."""

from __future__ import annotations

import json

import pytest

from service.apply import admission
from service.apply.admission import admit
from service.contract.decode import InvalidEvent
from service.domain.events import ConsumerEvent
from service.domain.outcomes import Reason
from service.domain.rules import InvalidEventError

CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"
VALUE = json.dumps(
    {
        "schema_version": 1,
        "event_id": "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
        "type": "consumer.upsert",
        "consumer_uuid": CONSUMER,
        "occurred_at": "2024-05-01T12:00:00Z",
    }
).encode()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "the record has no key (it must be the consumer_uuid)"),
        (
            CONSUMER.upper().encode(),
            "the key is not the consumer_uuid in canonical form (lower-case, dashed)",
        ),
    ],
)
def test_a_key_mismatch_says_what_the_key_must_be(key: bytes | None, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        admit(key, VALUE, 1 << 20)
    assert (caught.value.reason, caught.value.message) == (Reason.KEY_MISMATCH, message)


def test_an_event_the_rules_refuse_is_a_schema_violation_with_their_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The schema implies every rule of ``validate``; should they ever disagree, the
    # record is dead-lettered as a schema violation saying the rule's own message.
    def refuse(event: ConsumerEvent) -> None:
        raise InvalidEventError("project_id is longer than 255 characters")

    monkeypatch.setattr(admission, "validate", refuse)
    with pytest.raises(InvalidEvent) as caught:
        admit(CONSUMER.encode(), VALUE, 1 << 20)
    error = caught.value
    assert (error.reason, error.message) == (
        Reason.SCHEMA_VIOLATION,
        "project_id is longer than 255 characters",
    )
    assert error.exception is None and error.__cause__ is None
