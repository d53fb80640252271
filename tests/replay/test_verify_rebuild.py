"""``verify`` (service.replay.verify) without a broker: the expected state rebuilt from
hand-made sources into a scratch SQLite database and diffed with a live SQLite
database that was tampered with in each way the module names (missing, extra,
different, a pruned tombstone, inbox rows pruned or applied twice)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from service.replay import runner
from service.replay.runner import Mode, ReplayReport, replay
from service.replay.sources import SourceError
from service.replay.verify import FIELDS, Difference, VerifyReport, verify
from tests.apply.helpers import Db, migrated
from tests.replay.fakes import (
    ListSource,
    RecordingProgress,
    consumer_id,
    delete_doc,
    record,
    upsert_doc,
)

C = [consumer_id(n) for n in range(6)]


def history() -> tuple[ListSource, ListSource]:
    """Two sources (an archive and the topic after it): C1..C4 live, C5 deleted."""
    first = [
        record(0, upsert_doc(C[1])),
        record(1, upsert_doc(C[2])),
        record(2, upsert_doc(C[5])),
        record(3, upsert_doc(C[3], project_id="p3")),
    ]
    second = [
        record(4, delete_doc(C[5])),
        record(5, upsert_doc(C[4])),
        record(6, upsert_doc(C[1], user_id="u2")),
        record(7, value=b"not json", key=b"k"),
    ]
    return ListSource([first], name="archive a.jsonl"), ListSource([second], name="topic events")


#: One history for the live database and every rebuild (the event ids are fixed).
HISTORY = history()


@pytest.fixture
async def live(tmp_path: Path) -> Any:
    async with migrated(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}") as db:
        for source in HISTORY:
            await replay(source, settings=db.settings, mode=Mode.APPLY, engine=db.engine)
        yield db


async def run_verify(live: Db, **options: Any) -> VerifyReport:
    return await verify(list(HISTORY), settings=live.settings, live=live.engine, **options)


async def test_the_same_history_is_clean_and_the_rebuild_counts_both_sources(live: Db) -> None:
    progress = RecordingProgress()
    report = await run_verify(live, progress=progress)
    assert report.clean and report.differences == [] and report.problems == []
    assert report.compared == 5  # the deleted consumer is compared too
    rebuild = report.rebuild
    assert rebuild.source == "archive a.jsonl, topic events"
    assert rebuild.mode is Mode.APPLY
    assert rebuild.read == 8
    assert rebuild.outcomes == Counter({("applied", None): 7})
    assert rebuild.invalid == Counter({"not_json": 1})
    assert rebuild.seconds > 0
    assert [c[0] for c in progress.calls].count("start") == 2
    assert (report.pruned_tombstones, report.inbox_pruned) == (0, 0)


async def _sql(db: Db, *statements: str) -> None:
    async with db.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def test_every_kind_of_difference_is_found_in_uuid_order(live: Db) -> None:
    extra = consumer_id(9)
    await _sql(
        live,
        f"UPDATE consumers SET generation = 7 WHERE uuid = '{C[2]}'",
        f"DELETE FROM consumers WHERE uuid = '{C[3]}'",
        f"DELETE FROM consumers WHERE uuid = '{C[5]}'",
        "INSERT INTO consumers (uuid, project_id, user_id, generation, last_event_id,"
        f" created_at, updated_at) SELECT '{extra}', project_id, user_id, 1,"
        f" last_event_id, created_at, updated_at FROM consumers WHERE uuid = '{C[4]}'",
    )
    report = await run_verify(live)
    assert [(d.uuid, d.kind) for d in report.differences] == [
        (C[2], "different"),
        (C[3], "missing"),
        (C[5], "pruned_tombstone"),
        (extra, "extra"),
    ]
    different, missing, pruned, extra_row = report.differences
    assert different.fields == {"generation": (1, 7)}
    assert set(missing.fields) == set(FIELDS)
    assert missing.fields["project_id"] == ("p3", None)
    assert missing.fields["generation"] == (1, None)
    assert all(live_value is None for _, live_value in missing.fields.values())
    assert pruned.fields == {}
    assert set(extra_row.fields) == set(FIELDS)
    assert extra_row.fields["generation"] == (None, 1)
    assert all(expected is None for expected, _ in extra_row.fields.values())
    # Fewer applied inbox rows than the generation (C2 tampered to 7, the extra consumer
    # with none) reads as pruned inbox rows, not as a difference.
    assert report.inbox_pruned == 2
    assert report.compared == 6
    assert report.pruned_tombstones == 1
    assert [d.kind for d in report.problems] == ["different", "missing", "extra"]
    assert not report.clean


async def test_a_pruned_tombstone_is_no_problem_unless_strict(live: Db) -> None:
    await _sql(live, f"DELETE FROM consumers WHERE uuid = '{C[5]}'")
    report = await run_verify(live)
    assert [(d.uuid, d.kind) for d in report.differences] == [(C[5], "pruned_tombstone")]
    assert report.clean and report.problems == [] and report.pruned_tombstones == 1
    strict = await run_verify(live, strict=True)
    assert not strict.clean and [d.kind for d in strict.problems] == ["pruned_tombstone"]
    assert strict.to_json()["clean"] is False


async def test_inbox_rows_applied_twice_are_a_difference_and_pruned_ones_are_not(
    live: Db,
) -> None:
    await _sql(
        live,
        # C1 has generation 2 and two applied rows: prune one.
        f"DELETE FROM processed_events WHERE event_id IN (SELECT event_id FROM processed_events"
        f" WHERE consumer_uuid = '{C[1]}' ORDER BY source_offset LIMIT 1)",
        # C4: one more applied row than its generation, as if an event were applied twice.
        "INSERT INTO processed_events (event_id, consumer_uuid, event_type, payload_hash,"
        " outcome, reason, generation_after, attempts, processed_at) SELECT"
        f" '{consumer_id(99)}', consumer_uuid, event_type, payload_hash, outcome, reason,"
        f" generation_after, attempts, processed_at FROM processed_events"
        f" WHERE consumer_uuid = '{C[4]}'",
    )
    report = await run_verify(live)
    assert [(d.uuid, d.kind, d.fields) for d in report.differences] == [
        (C[4], "inbox", {"applied_inbox_rows": (1, 2)})
    ]
    assert report.inbox_pruned == 1
    assert not report.clean
    doc = report.to_json()
    assert doc["counts"] == {"inbox": 1}
    assert doc["consumers_with_pruned_inbox_rows"] == 1
    assert doc["differences"] == [
        {
            "consumer_uuid": C[4],
            "kind": "inbox",
            "fields": {"applied_inbox_rows": {"expected": 1, "live": 2}},
        }
    ]


async def test_a_scratch_database_must_be_empty(live: Db, tmp_path: Path) -> None:
    async with migrated(f"sqlite+aiosqlite:///{tmp_path / 'used.db'}") as used:
        await replay(HISTORY[0], settings=used.settings, mode=Mode.APPLY, engine=used.engine)
        with pytest.raises(SourceError, match=r"^the scratch database is not empty: give verify"):
            await run_verify(live, scratch_url=used.url)
        assert await used.count("consumers") == 4  # nothing was written into it


async def test_an_empty_scratch_database_given_is_used(live: Db, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
    report = await run_verify(live, scratch_url=url)
    assert report.clean
    async with migrated(url) as scratch:
        assert await scratch.count("consumers") == 5  # the rebuild is there


def test_the_report_as_json_counts_each_kind() -> None:
    report = VerifyReport(rebuild=ReplayReport(source="s", mode=Mode.APPLY), compared=4)
    report.differences += [
        Difference("a", "missing", {"generation": (1, None)}),
        Difference("b", "pruned_tombstone", {}),
        Difference("c", "missing", {}),
    ]
    report.pruned_tombstones = 1
    report.inbox_pruned = 2
    doc = report.to_json()
    assert doc["clean"] is False
    assert doc["consumers_compared"] == 4
    assert doc["counts"] == {"missing": 2, "pruned_tombstone": 1}
    assert doc["pruned_tombstones"] == 1
    assert doc["consumers_with_pruned_inbox_rows"] == 2
    assert doc["differences"][0] == {
        "consumer_uuid": "a",
        "kind": "missing",
        "fields": {"generation": {"expected": 1, "live": None}},
    }
    assert doc["rebuild"] == report.rebuild.to_json()
    assert [d.uuid for d in report.problems] == ["a", "c"]


async def test_an_extra_consumer_before_the_others_is_extra(live: Db) -> None:
    first = consumer_id(0)  # sorts before every consumer of the history
    await _sql(
        live,
        "INSERT INTO consumers (uuid, project_id, user_id, generation, last_event_id,"
        f" created_at, updated_at) SELECT '{first}', project_id, user_id, 1,"
        f" last_event_id, created_at, updated_at FROM consumers WHERE uuid = '{C[4]}'",
    )
    report = await run_verify(live)
    assert [(d.uuid, d.kind) for d in report.differences] == [(first, "extra")]
    assert report.compared == 6


async def test_every_pruned_tombstone_is_counted(tmp_path: Path) -> None:
    a, b = consumer_id(7), consumer_id(8)
    gone = ListSource(
        [
            [
                record(i, doc)
                for i, doc in enumerate(
                    [upsert_doc(a), upsert_doc(b), delete_doc(a), delete_doc(b)]
                )
            ]
        ]
    )
    async with migrated(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}") as db:
        await replay(gone, settings=db.settings, mode=Mode.APPLY, engine=db.engine)
        await _sql(db, "DELETE FROM consumers")
        report = await verify([gone], settings=db.settings, live=db.engine)
    assert report.pruned_tombstones == 2 and report.clean


async def test_the_rebuild_s_time_is_every_source_s(
    live: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replay reads the clock at its start, at each chunk and at its end."""
    readings = iter(range(100))
    monkeypatch.setattr(runner, "time", SimpleNamespace(monotonic=lambda: float(next(readings))))
    report = await run_verify(live)
    assert report.rebuild.seconds == 4.0  # 0 -> 2, then 3 -> 5
