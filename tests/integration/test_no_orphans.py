"""Killing a test run with SIGKILL leaves no Kafka, PostgreSQL or daemon process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.testing.processes import alive, children, wait_gone

PROBE = Path(__file__).parent / "probes" / "hold_servers.py"


def test_sigkill_of_the_test_run_leaves_no_server(tmp_path: Path) -> None:
    report = tmp_path / "pids.json"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CONSUMERGEN_TEST_")  # the inner run must start its own servers
    }
    env["ORPHAN_PROBE_REPORT"] = str(report)
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not report.exists():
            assert inner.poll() is None, inner.stdout.read().decode() if inner.stdout else ""
            assert time.monotonic() < deadline, "inner test run did not start its servers"
            time.sleep(0.2)
        pids = json.loads(report.read_text())
        servers = [
            pids["kafka_pid"],
            pids["postgres_pid"],
            pids["daemon_pid"],
            *children(pids["postgres_pid"]),
        ]
        assert all(alive(pid) for pid in servers), "servers should be up before the kill"
        assert len(servers) >= 3, "PostgreSQL should have background workers"
        os.kill(inner.pid, signal.SIGKILL)
        inner.wait(10)
        survivors = wait_gone(servers, within=30)
        assert survivors == [], f"processes outlived the killed test run: {survivors}"
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        if report.exists():
            shutil.rmtree(json.loads(report.read_text())["postgres_root"], ignore_errors=True)
