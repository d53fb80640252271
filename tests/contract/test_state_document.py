"""A consumer's state document (outcome records' ``state_after``, the read API's answer)
read back into a ``ConsumerState``: what a producer or the ``get`` verb decides from.

``state_from_document`` is what ``ConsumerReader.get`` returns to a caller, so its
refusals are that caller's error text: each one names what is wrong, and a document
that is wrong in only one field is refused as surely as one wrong in all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.contract.state import state_document, state_from_document
from service.domain.consumer import ConsumerState

CONSUMER = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"


def document(**change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "state": "live",
        "generation": 3,
        "project_id": "p-1",
        "user_id": "u-1",
        "consumer_type": "INSTANCE",
    }
    doc.update(change)
    return doc


def test_a_read_api_answer_becomes_the_state_with_its_update_time() -> None:
    answer = document(updated_at="2026-12-07T11:02:03.456+00:00", state="deleted")
    assert state_from_document(CONSUMER, answer) == ConsumerState(
        uuid=CONSUMER,
        generation=3,
        deleted=True,
        project_id="p-1",
        user_id="u-1",
        consumer_type="INSTANCE",
        # A document names no event: the state read from one has no last event id.
        last_event_id="",
        updated_at=datetime(2026, 12, 7, 11, 2, 3, 456000, tzinfo=UTC),
    )


def test_a_state_document_round_trips_without_an_update_time() -> None:
    state = ConsumerState(
        uuid=CONSUMER,
        generation=7,
        deleted=False,
        project_id="p-2",
        user_id="u-2",
        consumer_type=None,
        last_event_id="",
    )
    assert state_from_document(CONSUMER, state_document(state)) == state


def test_an_update_time_that_is_not_text_is_left_unknown() -> None:
    assert state_from_document(CONSUMER, document(updated_at=12345)).updated_at is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": "gone"}, "bad state or generation"),
        ({"generation": "3"}, "bad state or generation"),
        ({"generation": None}, "bad state or generation"),
        ({"project_id": 5}, "owners must be strings"),
        ({"user_id": None}, "owners must be strings"),
        ({"consumer_type": 7}, "consumer_type must be a string"),
    ],
)
def test_a_document_wrong_in_one_field_is_refused_naming_it(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        state_from_document(CONSUMER, document(**change))
    assert str(caught.value) == f"not a consumer state document: {message}"


@pytest.mark.parametrize("missing", ["state", "generation", "project_id", "user_id"])
def test_a_document_missing_a_field_is_refused_naming_it(missing: str) -> None:
    doc = document()
    del doc[missing]
    with pytest.raises(ValueError) as caught:
        state_from_document(CONSUMER, doc)
    assert str(caught.value) == f"not a consumer state document: missing '{missing}'"


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^not a consumer state document: missing "):
        state_from_document(CONSUMER, ["live", 3])  # type: ignore[arg-type]
