"""SQLite's lean writer (``service.store.sqlite_writer``) at its edges, on a real file.

What must hold: groups run one after another on the writer's one thread (named for it
in a thread dump), on one connection kept between groups and closed, with the thread,
by ``close``; a lock another connection holds is waited for up to the configured busy
timeout, and past it the failure names its cause; a work that raises is rolled back and
its own error reaches the caller; with no other writer the group's reads see every row
so no part falls back; a write that finds the row changed is a race of its kind (the
applier's settlement reads it); a redelivered failed event is replaced even after a new
event's insert; the timestamps it writes are those SQLAlchemy writes, so the age
bounds of ``prune`` (compared in SQL, as text) hold for its rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.apply.applier import Applier
from service.apply.group import GroupCommit, run_to_end
from service.config import Settings, load_settings
from service.contract.decode import decode_event
from service.domain.consumer import ConsumerState
from service.domain.events import ConsumerEvent, EventType
from service.domain.inbox import InboxWrite
from service.domain.outcomes import EventSource
from service.domain.rules import Write, WriteKind
from service.store.engine import create_engine
from service.store.errors import TransientDatabaseError
from service.store.migrate import upgrade
from service.store.prune import prune
from service.store.sqlite_writer import SqliteGroup, SqliteGroupWriter, SqliteUnit
from service.store.unit_of_work import SqlUnitOfWorkFactory
from service.store.writes import RaceKind, StoreRace
from service.testing.database import consumer_state, inbox
from service.testing.model import event_doc

#: How long anything may take before the test calls it a hang.
DEADLINE = 10.0


@pytest.fixture
async def settings(sqlite_url: str) -> Settings:
    settings = load_settings(database_url=sqlite_url, sqlite_busy_timeout_ms=30_000)
    await upgrade(settings)
    return settings


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[SqliteGroupWriter]:
    writer = SqliteGroupWriter(settings)
    try:
        yield writer
    finally:
        await writer.close()


@pytest.fixture
async def group(settings: Settings, writer: SqliteGroupWriter) -> AsyncIterator[GroupCommit]:
    engine = create_engine(settings)
    units = SqlUnitOfWorkFactory(engine)
    try:
        yield GroupCommit(Applier(units, settings), writer, units.write_turn)
    finally:
        await engine.dispose()


def _event(consumer: str, **fields: Any) -> ConsumerEvent:
    owners: dict[str, Any] = {} if fields.get("delete") else {"project": "p", "user": "u"}
    doc = event_doc(consumer, **owners, **fields)
    return decode_event(json.dumps(doc).encode(), max_bytes=65_536)


def _items(*events: ConsumerEvent) -> list[tuple[ConsumerEvent, EventSource]]:
    return [(e, EventSource("events", 0, i)) for i, e in enumerate(events)]


def _open_handles(path: Path | str) -> int:
    """This process's file descriptors on the database file itself."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) == target
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return count


async def test_groups_run_one_after_another_on_the_writers_own_thread(
    writer: SqliteGroupWriter,
) -> None:
    """A second group handed in while the first runs waits for it, on the same thread:
    the one connection is never in two transactions at once."""
    started, go = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    def first(_: SqliteGroup) -> str:
        threads.append(threading.current_thread())
        started.set()
        assert go.wait(DEADLINE)
        return "first"

    def second(_: SqliteGroup) -> str:
        threads.append(threading.current_thread())
        return "second"

    one = asyncio.ensure_future(writer.run_group(first))
    assert await asyncio.to_thread(started.wait, DEADLINE)
    two = asyncio.ensure_future(writer.run_group(second))
    await asyncio.sleep(0)  # the second group is handed to the writer while the first runs
    go.set()
    assert list(await asyncio.wait_for(asyncio.gather(one, two), DEADLINE)) == ["first", "second"]
    assert threads[0] is threads[1] is not threading.main_thread()
    assert threads[0].name.startswith("sqlite-writer")


async def test_one_connection_is_kept_between_groups_and_close_ends_it_and_the_thread(
    settings: Settings,
) -> None:
    writer = SqliteGroupWriter(settings)
    threads: list[threading.Thread] = []

    def work(_: SqliteGroup) -> None:
        threads.append(threading.current_thread())

    assert _open_handles(writer.path) == 0
    await writer.run_group(work)
    assert _open_handles(writer.path) == 1
    await writer.run_group(work)
    assert _open_handles(writer.path) == 1
    await writer.close()
    assert not threads[0].is_alive()  # joined: nothing of the writer outlives close
    assert _open_handles(writer.path) == 0


async def test_a_lock_released_within_the_busy_timeout_is_waited_for(
    writer: SqliteGroupWriter,
) -> None:
    """The configured busy timeout (30 s here) applies: another connection's write lock,
    released after a moment, delays the group instead of failing it."""
    holder = sqlite3.connect(writer.path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        asyncio.get_running_loop().call_later(0.3, holder.execute, "ROLLBACK")
        started = time.monotonic()
        assert await asyncio.wait_for(writer.run_group(lambda _: "done"), DEADLINE) == "done"
        assert time.monotonic() - started >= 0.25  # it did wait for the lock
    finally:
        holder.close()


async def test_a_busy_database_past_the_timeout_names_its_cause(sqlite_url: str) -> None:
    settings = load_settings(database_url=sqlite_url, sqlite_busy_timeout_ms=50)
    await upgrade(settings)
    writer = SqliteGroupWriter(settings)
    holder = sqlite3.connect(writer.path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TransientDatabaseError) as caught:
            await writer.run_group(lambda _: None)
        assert str(caught.value) == "OperationalError: database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await writer.close()


def _insert(consumer: str) -> Write:
    after = _state(consumer, generation=1)
    return Write(WriteKind.INSERT, None, after)


def _state(consumer: str, generation: int) -> ConsumerState:
    return ConsumerState(
        uuid=consumer,
        generation=generation,
        deleted=False,
        project_id="p",
        user_id="u",
        consumer_type=None,
        last_event_id=str(uuid.uuid4()),
    )


async def test_a_work_that_raises_is_rolled_back_and_its_error_reaches_the_caller(
    writer: SqliteGroupWriter, settings: Settings
) -> None:
    consumer = str(uuid.uuid4())
    bug = LookupError("a bug in the work")

    def failing(group_tx: SqliteGroup) -> None:
        with group_tx.part() as unit:
            run_to_end(unit.write_consumers([_insert(consumer)], datetime.now(UTC)))
        raise bug

    with pytest.raises(LookupError) as caught:
        await writer.run_group(failing)
    assert caught.value is bug
    assert await consumer_state(settings.database_url) == {}

    def working(group_tx: SqliteGroup) -> None:
        with group_tx.part() as unit:
            run_to_end(unit.write_consumers([_insert(consumer)], datetime.now(UTC)))

    await writer.run_group(working)  # the transaction was ended: the next one begins
    assert set(await consumer_state(settings.database_url)) == {consumer}


async def test_with_no_other_writer_no_part_falls_back(group: GroupCommit) -> None:
    """Creates, then updates of what the group itself committed, then a create next to
    an update: the group's reads see every row, so every write lands the first time."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    created = await group.apply_batch(_items(_event(first)))
    updated = await group.apply_batch(_items(_event(first, expected=1), _event(second)))
    again = await group.apply_batch(_items(_event(first, expected=2), _event(second, expected=1)))
    assert [o.generation_after for o in created + updated + again] == [1, 2, 1, 3, 2]
    assert {o.kind.value for o in created + updated + again} == {"applied"}
    assert group.applier.stats.batch_fallbacks == 0


Act = Callable[[SqliteUnit, Any], Coroutine[Any, Any, None]]


async def _insert_again(unit: SqliteUnit, seen: Any) -> None:
    await unit.write_consumers([Write(WriteKind.INSERT, None, seen.state)], datetime.now(UTC))


async def _update_stale(unit: SqliteUnit, seen: Any) -> None:
    stale = replace(seen.state, generation=seen.state.generation + 4)
    write = Write(WriteKind.UPDATE, stale, replace(stale, generation=stale.generation + 1))
    await unit.write_consumers([write], datetime.now(UTC))


async def _record_again(unit: SqliteUnit, seen: Any) -> None:
    await unit.write_inbox([(InboxWrite.INSERT, seen.row)], datetime.now(UTC))


async def _replace_not_failed(unit: SqliteUnit, seen: Any) -> None:
    await unit.write_inbox([(InboxWrite.REPLACE_FAILED, seen.row)], datetime.now(UTC))


@pytest.mark.parametrize(
    ("act", "kind"),
    [
        (_insert_again, RaceKind.CONSUMER),
        (_update_stale, RaceKind.CONSUMER),
        (_record_again, RaceKind.INBOX),
        (_replace_not_failed, RaceKind.INBOX),
    ],
    ids=["insert-taken", "update-stale", "inbox-taken", "replace-not-failed"],
)
async def test_a_write_that_finds_the_row_changed_is_a_race_of_its_kind(
    group: GroupCommit, settings: Settings, act: Act, kind: RaceKind
) -> None:
    """What another writer's commit between read and write looks like to the unit: the
    part is undone and the race says which table (the applier's settlement of an
    unconditional event goes by it)."""
    consumer = str(uuid.uuid4())
    event = _event(consumer)
    await group.apply_batch(_items(event))
    before = await consumer_state(settings.database_url)

    class Seen:
        state: Any
        row: Any

    def work(group_tx: SqliteGroup) -> RaceKind | None:
        seen = Seen()
        try:
            with group_tx.part() as unit:
                seen.state = run_to_end(unit.load_consumers([consumer]))[consumer]
                (row,) = run_to_end(unit.load_inbox([event.event_id])).values()
                seen.row = replace(row, event_type=EventType.UPSERT, attempts=1)
                run_to_end(act(unit, seen))
        except StoreRace as race:
            return race.kind
        return None

    assert await group.writer.run_group(work) is kind
    assert await consumer_state(settings.database_url) == before


async def test_a_failed_row_is_replaced_after_a_new_events_insert(
    group: GroupCommit, settings: Settings
) -> None:
    """A batch whose first event is new (its inbox row inserted) and whose second was
    recorded ``failed`` before: both end ``applied`` in the inbox."""
    writer = group.writer
    assert isinstance(writer, SqliteGroupWriter)
    new, redelivered = _event(str(uuid.uuid4())), _event(str(uuid.uuid4()))
    with sqlite3.connect(writer.path) as connection:
        connection.execute(
            "INSERT INTO processed_events (event_id, consumer_uuid, event_type, payload_hash,"
            " outcome, reason, generation_after, attempts, source_topic, source_partition,"
            " source_offset, processed_at) VALUES (?, ?, ?, ?, 'failed',"
            " 'cas_retries_exhausted', NULL, 3, 'events', 0, 0, '2026-01-01 00:00:00.000000')",
            (
                redelivered.event_id,
                redelivered.consumer_uuid,
                redelivered.type.value,
                redelivered.payload_hash(),
            ),
        )
    outcomes = await group.apply_batch(_items(new, redelivered))
    assert [o.kind.value for o in outcomes] == ["applied", "applied"]
    recorded = await inbox(settings.database_url)
    assert recorded[new.event_id] == recorded[redelivered.event_id] == ("applied", None)


async def test_rows_it_writes_are_pruned_by_age_like_any_other(
    group: GroupCommit, settings: Settings
) -> None:
    """``prune`` compares the stored timestamps with its cutoff in SQL, as text: the
    writer's rows must carry SQLAlchemy's spelling for the age bound to hold."""
    consumer = str(uuid.uuid4())
    outcomes = await group.apply_batch(_items(_event(consumer), _event(consumer, delete=True)))
    assert [o.kind.value for o in outcomes] == ["applied", "applied"]
    engine = create_engine(settings)
    try:
        young = await prune(engine, timedelta(hours=1))
        assert (young.inbox_rows, young.tombstones) == (0, 0)
        later = datetime.now(UTC) + timedelta(hours=2)
        old = await prune(engine, timedelta(hours=1), now=later)
        assert (old.inbox_rows, old.tombstones) == (2, 1)
    finally:
        await engine.dispose()


async def test_close_waits_for_a_running_group_on_the_writers_thread(settings: Settings) -> None:
    """The daemon's shutdown closes the writer after its workers stop; a group whose
    caller was cancelled still runs on the writer's thread, so the connection is closed
    behind it there, not under it from elsewhere: the group commits, then close ends."""
    writer = SqliteGroupWriter(settings)
    consumer = str(uuid.uuid4())
    started, go = threading.Event(), threading.Event()

    def slow(group_tx: SqliteGroup) -> None:
        started.set()
        assert go.wait(DEADLINE)
        with group_tx.part() as unit:
            run_to_end(unit.write_consumers([_insert(consumer)], datetime.now(UTC)))

    running = asyncio.ensure_future(writer.run_group(slow))
    assert await asyncio.to_thread(started.wait, DEADLINE)
    closing = asyncio.ensure_future(writer.close())
    done, _ = await asyncio.wait({closing}, timeout=0.2)
    assert not done  # close waits behind the running group
    go.set()
    await asyncio.wait_for(asyncio.gather(running, closing), DEADLINE)
    assert set(await consumer_state(settings.database_url)) == {consumer}
