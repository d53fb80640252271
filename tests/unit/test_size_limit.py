"""The producer's size limit is the daemon's: ``CONSUMERGEN_MAX_EVENT_BYTES`` itself is
accepted and one byte more refused as ``too_large``, on both sides, by the one rule
(``service.contract.decode.check_size``) applied to the very bytes that are sent."""

from __future__ import annotations

import uuid

import pytest

from service.apply.admission import admit
from service.config import load_settings
from service.contract.decode import InvalidEvent
from service.domain.events import EventType
from service.domain.outcomes import Reason
from service.producer.events import event_from_line, new_event, wire_value

LIMIT = load_settings(max_event_bytes=1024).max_event_bytes


def _event_of(size: int) -> tuple[str, bytes]:
    """A valid event whose wire bytes are exactly ``size`` long (padded in its fields)."""
    consumer = str(uuid.uuid4())
    for pad in range(1, 256):
        event = new_event(
            EventType.UPSERT,
            consumer,
            project_id="p" * pad,
            user_id="u" * 255,
            consumer_type="T" * 255,
            producer="w" * 255,
        )
        _, value = wire_value(event, max_bytes=2**62)
        if len(value) == size:
            return consumer, value
    raise AssertionError(f"no event of {size} bytes")


@pytest.mark.parametrize("size", [LIMIT, LIMIT + 1])
def test_the_limit_is_accepted_and_one_byte_more_refused_on_both_sides(size: int) -> None:
    consumer, value = _event_of(size)
    producer_sides = [
        lambda: wire_value(value, max_bytes=LIMIT),  # raw bytes handed to the producer
        lambda: event_from_line(value, max_bytes=LIMIT),  # a line of `produce --file`
    ]
    daemon_side = lambda: admit(consumer.encode(), value, LIMIT)  # noqa: E731
    if size <= LIMIT:
        sent = wire_value(value, max_bytes=LIMIT)[1]
        assert sent == value  # the bytes measured are the bytes sent
        event_from_line(value, max_bytes=LIMIT)
        assert admit(consumer.encode(), sent, LIMIT).consumer_uuid == consumer
        return
    for side in [*producer_sides, daemon_side]:
        with pytest.raises(InvalidEvent) as refused:
            side()
        assert refused.value.reason is Reason.TOO_LARGE
        assert f"{LIMIT + 1} bytes, more than the limit of {LIMIT}" in str(refused.value)


def test_a_built_event_is_held_to_the_limit_on_its_wire_bytes() -> None:
    """``EventProducer`` builds the event, then measures the bytes it will send."""
    _, value = _event_of(LIMIT + 1)
    event = wire_value(value, max_bytes=2**62)[0]
    assert wire_value(event, max_bytes=LIMIT + 1)[1] == value
    with pytest.raises(InvalidEvent) as refused:
        wire_value(event, max_bytes=LIMIT)
    assert refused.value.reason is Reason.TOO_LARGE
