"""The README's main job: `consumergen run --local` on a bare folder does the whole thing.

It starts its own broker, creates the SQLite file and the topics, applies a produced
event, answers `produce --wait` run with no setting but the broker's address (the
default reply topic is shared), reports ready, and on SIGTERM exits 0 and takes the
broker down with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from service.embedded.process import free_port
from service.testing.kafka_io import read_all
from service.testing.processes import children, wait_gone

pytestmark = [pytest.mark.kafka]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(json.loads(response.read())["ready"])
    except (OSError, urllib.error.HTTPError):
        return False


def _generation(db: Path, consumer: str) -> int | None:
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute(
                "SELECT generation FROM consumers WHERE uuid = ?", (consumer,)
            ).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return None
    return None if row is None else int(row[0])


def test_run_local_from_a_bare_folder(tmp_path: Path) -> None:
    from log_guard import scan_external

    port, health = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    env.update(
        CONSUMERGEN_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        CONSUMERGEN_HEALTH_PORT=str(health),
        CONSUMERGEN_READ_API_PORT="0",
        CONSUMERGEN_LOG_REDACTION_KEY="main-job-test",
        CONSUMERGEN_LOG_FORMAT="json",
    )
    log = tmp_path / "daemon.log"
    consumer = str(uuid.uuid4())
    with log.open("wb") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--local"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not _ready(health):
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not ready in 120 s:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        brokers = children(daemon.pid)
        assert brokers, "the local broker should be a child of the daemon"

        produced = subprocess.run(
            [
                sys.executable,
                "-m",
                "service",
                "produce",
                "--consumer-uuid",
                consumer,
                "--expected-generation",
                "null",
                "--project",
                "p",
                "--user",
                "u",
                "--json",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        scan_external(produced.stderr, "consumergen produce stderr")
        assert produced.returncode == 0, produced.stderr
        event_id = json.loads(produced.stdout.splitlines()[0])["event_id"]

        db = tmp_path / "consumergen.sqlite3"
        deadline = time.monotonic() + 30
        while _generation(db, consumer) != 1:
            assert time.monotonic() < deadline, "event not applied:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
        outcomes = asyncio.run(read_all(f"127.0.0.1:{port}", "consumer-events.outcomes"))
        assert [json.loads(r.value)["event_id"] for r in outcomes] == [event_id]

        # The README's loop in a second terminal: `produce --wait` with no setting but
        # where the broker is (this test's free port stands for the default 9092): the
        # default reply topic is the daemon's too, so the outcome comes back.
        second = str(uuid.uuid4())
        bare = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
        bare["CONSUMERGEN_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{port}"
        event = ["--consumer-uuid", second, "--expected-generation", "null"]
        owners = ["--project", "p", "--user", "u"]
        waited = subprocess.run(
            [sys.executable, "-m", "service", "produce", "--wait", *event, *owners],
            cwd=tmp_path,
            env=bare,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        scan_external(waited.stderr, "consumergen produce --wait stderr")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert waited.stdout.strip().endswith("applied (generation 1)"), waited.stdout
        assert _generation(db, second) == 1

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, log.read_text()[-3000:]
        assert wait_gone(brokers, within=30) == [], "the local broker outlived the daemon"
        assert (tmp_path / ".local" / "kafka" / "logs" / "meta.properties").exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        scan_external(log.read_text(errors="replace"), "consumergen run --local output")
