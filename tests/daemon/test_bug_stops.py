"""A bug stops the daemon loudly (DESIGN.md, failure classes: "A bug (an invariant broken
outside those boundaries): stop loudly").

A real daemon process, on SQLite and on PostgreSQL, meets an error that is nobody's but
ours: an ``IntegrityError`` raised by a trigger the test installs on the inbox for one
event (what a wrong line of SQL or a broken invariant raises; the record itself is valid
and the database is up).  The daemon must not take it for the infrastructure (pause,
back off, retry for ever) nor for the record (dead-letter it and go on): it logs the
failure with its class, exits non-zero by itself, and commits nothing past the failing
batch.  Once the bug is fixed, a restart applies the events it had not committed,
exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.store.migrate import upgrade
from service.testing.daemon import (
    Topics,
    assert_committed_prefix_durable,
    assert_matches_model,
    daemon_settings,
    process_env,
)
from service.testing.daemon_process import DaemonProcess
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import (
    committed_offsets,
    produce_docs,
    read_all,
    wait_all_committed,
)
from service.testing.model import event_doc
from service.testing.workload import expected_state, mixed_stream
from tests.support.process_logs import scan_daemon_logs

pytestmark = [pytest.mark.kafka]

INSTALL = {
    "sqlite": [
        "CREATE TRIGGER injected_bug BEFORE INSERT ON processed_events"
        " WHEN NEW.event_id = '{event_id}'"
        " BEGIN SELECT RAISE(ABORT, 'injected bug'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION injected_bug() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.event_id = '{event_id}' THEN"
        " RAISE EXCEPTION 'injected bug' USING ERRCODE = 'check_violation'; END IF;"
        " RETURN NEW; END $$",
        "CREATE TRIGGER injected_bug BEFORE INSERT ON processed_events"
        " FOR EACH ROW EXECUTE FUNCTION injected_bug()",
    ],
}
REMOVE = {
    "sqlite": ["DROP TRIGGER injected_bug"],
    "postgresql": [
        "DROP TRIGGER injected_bug ON processed_events",
        "DROP FUNCTION injected_bug()",
    ],
}


async def _execute(database_url: str, statements: list[str], **values: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement.format(**values)))
    finally:
        await engine.dispose()


async def test_a_bug_stops_the_daemon_loudly_without_pausing(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path: Path
) -> None:
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    stream = mixed_stream(consumers=20, events=200, seed=173)
    bug = event_doc(str(uuid.uuid4()), expected=None, project="p", user="u")
    stream.insert(100, bug)
    model = expected_state(stream)
    await upgrade(daemon_settings(kafka_bootstrap, database_url, topics))
    await _execute(database_url, INSTALL[dialect], event_id=bug["event_id"])
    daemon = DaemonProcess(
        process_env(kafka_bootstrap, database_url, topics, batch_max_events=20), tmp_path
    )
    try:
        await produce_docs(kafka_bootstrap, topics.events, stream[:100])
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        began = time.monotonic()
        await produce_docs(kafka_bootstrap, topics.events, stream[100:])
        code = await asyncio.to_thread(daemon.wait, 30)  # by itself, not after a signal
        stopped_in = time.monotonic() - began
        assert code == 1, daemon.tail()

        events = daemon.log_events()
        crashed = [e for e in events if e.get("event") == "partition worker crashed"]
        assert crashed, daemon.tail()
        assert (crashed[0]["level"], crashed[0]["failure_class"], crashed[0]["error_class"]) == (
            "error", "bug", "IntegrityError",
        )  # fmt: skip
        assert any(e.get("event") == "daemon exited after an internal error" for e in events)
        # Not taken for the infrastructure: no partition paused, no backoff.
        paused = "partition paused: infrastructure failure, retrying with backoff"
        assert not [e for e in events if e.get("event") == paused], daemon.tail()
        # Not taken for the record: nothing dead-lettered.
        assert await read_all(kafka_bootstrap, topics.dlq) == []
        # Nothing committed past the failing batch: the bug's event has no outcome, and
        # its partition's committed offset is at most the bug's own.
        (where,) = [
            (r.partition, r.offset)
            for r in await read_all(kafka_bootstrap, topics.events)
            if r.key == bug["consumer_uuid"].encode()
        ]
        committed = await committed_offsets(kafka_bootstrap, topics.group, topics.events)
        assert committed.get(where[0], 0) <= where[1]
        assert bug["event_id"] not in await inbox(database_url)
        await assert_committed_prefix_durable(kafka_bootstrap, topics, database_url)

        # The bug fixed, a restart applies what was not committed, exactly once.
        await _execute(database_url, REMOVE[dialect])
        daemon.start()
        await asyncio.to_thread(daemon.wait_ready, 60)
        await wait_all_committed(kafka_bootstrap, topics.group, topics.events, within=60)
        daemon.kill(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, daemon.tail()
        print(f"\n[bug] the daemon exited {stopped_in:.2f}s after the bug's event was sent")
    finally:
        daemon.stop()
        scan_daemon_logs(daemon)
    assert_matches_model(await consumer_state(database_url), await inbox(database_url), model)
    assert await read_all(kafka_bootstrap, topics.dlq) == []
