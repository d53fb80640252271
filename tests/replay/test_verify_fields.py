"""`verify` compares every field of a consumer's state, without a broker: two SQLite
databases given the same first event and a second one that differs in one respect only,
then ``diff`` between them must name exactly that field (the issue-21 survivor: a
consumer deleted in one and live in the other, at the same generation, called clean)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from service.domain.consumer import ConsumerState
from service.domain.events import ConsumerEvent
from service.replay.runner import Mode, ReplayReport
from service.replay.verify import FIELDS, NOT_COMPARED, Difference, VerifyReport, diff
from tests.apply.helpers import delete, migrated, new_id, upsert

CONSUMER = "00000000-0000-4000-8000-00000000000c"
CREATE = upsert(CONSUMER, None, project_id="p", user_id="u", consumer_type="T")
SECOND = new_id()


def _then(second: ConsumerEvent) -> list[ConsumerEvent]:
    return [CREATE, second]


#: For each compared field: (the expected history, a live one differing in that field
#: only).  The second events share one event id, so ``last_event_id`` agrees unless the
#: case is about it.
CASES: dict[str, tuple[list[ConsumerEvent], list[ConsumerEvent]]] = {
    "generation": (
        _then(upsert(CONSUMER, event_id=SECOND)),
        [CREATE, upsert(CONSUMER), upsert(CONSUMER, event_id=SECOND)],
    ),
    "deleted": (_then(upsert(CONSUMER, event_id=SECOND)), _then(delete(CONSUMER, event_id=SECOND))),
    "project_id": (
        _then(upsert(CONSUMER, event_id=SECOND, project_id="a")),
        _then(upsert(CONSUMER, event_id=SECOND, project_id="b")),
    ),
    "user_id": (
        _then(upsert(CONSUMER, event_id=SECOND, user_id="a")),
        _then(upsert(CONSUMER, event_id=SECOND, user_id="b")),
    ),
    "consumer_type": (
        _then(upsert(CONSUMER, event_id=SECOND, consumer_type="A")),
        _then(upsert(CONSUMER, event_id=SECOND, consumer_type="B")),
    ),
    "last_event_id": (_then(upsert(CONSUMER, event_id=SECOND)), _then(upsert(CONSUMER))),
}


def test_verify_compares_every_field_of_the_state_but_the_write_times() -> None:
    """A field added to ``ConsumerState`` is compared unless named in ``NOT_COMPARED``;
    and every compared field has a case below."""
    assert set(FIELDS) | NOT_COMPARED == {f.name for f in fields(ConsumerState)}
    assert sorted(NOT_COMPARED) == ["created_at", "deleted_at", "updated_at", "uuid"]
    assert set(CASES) == set(FIELDS)


@pytest.mark.parametrize("field", sorted(CASES))
async def test_verify_finds_a_consumer_that_differs_in_one_field_only(
    field: str, tmp_path: Path
) -> None:
    expected_events, live_events = CASES[field]
    async with (
        migrated(f"sqlite+aiosqlite:///{tmp_path / 'expected.db'}") as expected,
        migrated(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}") as live,
    ):
        for ev in expected_events:
            await expected.applier.apply(ev)
        for ev in live_events:
            await live.applier.apply(ev)
        report = VerifyReport(rebuild=ReplayReport(source="test", mode=Mode.APPLY))
        await diff(expected.engine, live.engine, report)
    assert report.compared == 1
    assert [(d.uuid, d.kind, set(d.fields)) for d in report.differences] == [
        (CONSUMER, "different", {field})
    ]
    assert not report.clean


async def test_the_same_history_is_clean(tmp_path: Path) -> None:
    """The control: identical histories (written at other times) differ in nothing."""
    history = [CREATE, upsert(CONSUMER, project_id="x"), delete(CONSUMER)]
    async with (
        migrated(f"sqlite+aiosqlite:///{tmp_path / 'expected.db'}") as expected,
        migrated(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}") as live,
    ):
        for db in (expected, live):
            for ev in history:
                await db.applier.apply(ev)
        report = VerifyReport(rebuild=ReplayReport(source="test", mode=Mode.APPLY))
        await diff(expected.engine, live.engine, report)
    assert (report.compared, report.differences, report.clean) == (1, [], True)


def test_difference_lists_the_field_it_names() -> None:
    assert Difference(CONSUMER, "different", {"deleted": (False, True)}).to_json()["fields"] == {
        "deleted": {"expected": False, "live": True}
    }
