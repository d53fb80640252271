"""One spelling per instant, whatever the machine's time zone: an event's
``occurred_at`` (which its payload hash is computed over) and the timestamps of a dead
letter are written in UTC with a ``Z``, so two daemons on machines set to different
zones hash the same event alike and stamp the same instant alike."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.contract.records import dead_letter_headers, utc_timestamp
from service.domain.events import ConsumerEvent, EventType

EVENT = ConsumerEvent(
    event_id="6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
    type=EventType.UPSERT,
    consumer_uuid="0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80",
    occurred_at=datetime(2025, 1, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
)


@pytest.fixture
def machine_in_kolkata(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone set to UTC+05:30 (no daylight saving) for the test."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert datetime.now().astimezone().utcoffset() == timedelta(hours=5, minutes=30)
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_event_s_time_is_spelt_in_utc_whatever_the_machine_s_zone(
    machine_in_kolkata: None,
) -> None:
    assert EVENT.to_document()["occurred_at"] == "2025-01-01T10:30:00Z"
    nanos = replace(EVENT, occurred_at_nanos=7)
    assert nanos.to_document()["occurred_at"] == "2025-01-01T10:30:00.000000007Z"


def test_dead_letter_times_are_utc_whatever_the_machine_s_zone(machine_in_kolkata: None) -> None:
    moment = datetime(2025, 1, 1, 12, 30, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(moment) == "2025-01-01T10:30:00.250Z"
    headers = dict(
        dead_letter_headers(
            [],
            error_class="invalid",
            reason="not_json",
            message="m",
            origin_topic="t",
            origin_partition=0,
            origin_offset=0,
            attempts=1,
            first_failed_at=moment,
            failed_at=moment.astimezone(UTC),
        )
    )
    assert headers["first_failed_at"] == headers["failed_at"] == b"2025-01-01T10:30:00.250Z"


@pytest.mark.parametrize("nanos", [1000, -1])
def test_sub_microsecond_nanoseconds_out_of_range_are_refused(nanos: int) -> None:
    with pytest.raises(ValueError) as caught:
        replace(EVENT, occurred_at_nanos=nanos).to_document()
    assert str(caught.value) == "occurred_at_nanos is 0-999, on a timestamp with a zone"


def test_nanoseconds_need_a_time_with_a_zone() -> None:
    naive = replace(EVENT, occurred_at=datetime(2025, 1, 1, 12, 30), occurred_at_nanos=5)
    with pytest.raises(ValueError, match=r"^occurred_at_nanos is 0-999, on a timestamp"):
        naive.to_document()


def test_events_that_differ_only_in_their_time_hash_differently() -> None:
    # "Different for any change of meaning" (payload_hash), for a time built in Python
    # without a zone too: the same event id at another time is another event.
    first = replace(EVENT, occurred_at=datetime(2025, 1, 1, 0, 0))
    later = replace(EVENT, occurred_at=datetime(2025, 1, 1, 5, 0))
    assert first.payload_hash() != later.payload_hash()
    assert EVENT.payload_hash() != replace(EVENT, occurred_at_nanos=1).payload_hash()
