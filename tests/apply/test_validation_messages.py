"""What ``validate`` says when it refuses an event: the exact one-line message, which the
record boundary (``service.apply.admission``) puts in the dead letter's ``error.message``
for the operator.  It names the field and what is wrong, never the value."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.domain.events import ConsumerEvent
from service.domain.rules import InvalidEventError, validate
from tests.apply.helpers import event, upsert

C = "abcdef11-2222-4333-8444-555555555555"
LENGTH = "must be a string of 1 to 255 characters"

CASES: list[tuple[str, ConsumerEvent, str]] = [
    (
        "consumer upper",
        upsert(C.upper()),
        "consumer_uuid is not a canonical lower-case dashed UUID",
    ),
    ("event id", event(C, event_id="x"), "event_id is not a canonical lower-case dashed UUID"),
    (
        "type",
        replace(upsert(C), type="consumer.merge"),  # type: ignore[arg-type]
        "type is not consumer.upsert or consumer.delete",
    ),
    ("negative", upsert(C, -1), "expected_generation must be absent, null or an integer >= 0"),
    ("empty project", upsert(C, project_id=""), f"project_id {LENGTH}"),
    ("long user", upsert(C, user_id="u" * 256), f"user_id {LENGTH}"),
    ("not text", upsert(C, consumer_type=5), f"consumer_type {LENGTH}"),
    ("nul", upsert(C, user_id="a\x00"), "user_id contains a NUL character"),
    ("surrogate", upsert(C, project_id="\ud800"), "project_id is not valid Unicode text"),
    ("type pattern", upsert(C, consumer_type="lower"), "consumer_type must match ^[A-Z0-9_]+$"),
]


@pytest.mark.parametrize(("ev", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_refusal_names_the_field_and_the_rule(ev: ConsumerEvent, message: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        validate(ev)
    assert str(caught.value) == message


def test_each_owner_field_is_checked_not_only_the_first() -> None:
    for name in ("project_id", "user_id", "consumer_type"):
        with pytest.raises(InvalidEventError) as caught:
            validate(upsert(C, **{name: "\x00"}))
        assert str(caught.value) == f"{name} contains a NUL character"
