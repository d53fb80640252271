"""``UNCONDITIONAL``, the precondition of an event without ``expected_generation``: one
object, which the rules test by identity (``is UNCONDITIONAL``), so it must stay that one
object through a copy or a pickle (events cross process boundaries in the test model's
workers and in anything a user builds on the producer API), and it reads as its name."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime

from service.domain.events import UNCONDITIONAL, ConsumerEvent, EventType

EVENT = ConsumerEvent(
    event_id="6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
    type=EventType.UPSERT,
    consumer_uuid="0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80",
    occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
)


def test_an_unconditional_event_stays_unconditional_through_pickle_and_copy() -> None:
    for back in (pickle.loads(pickle.dumps(EVENT)), copy.deepcopy(EVENT), copy.copy(EVENT)):
        assert back == EVENT
        assert back.expected_generation is UNCONDITIONAL and back.is_unconditional
        assert "expected_generation" not in back.to_document()


def test_the_precondition_reads_as_its_name() -> None:
    assert repr(UNCONDITIONAL) == "UNCONDITIONAL"
    assert "expected_generation=UNCONDITIONAL" in repr(EVENT)
