"""Not collected by default: a test run that starts both servers and then waits to be killed.

tests/integration/test_no_orphans.py runs this file in an inner pytest and kills
that run with SIGKILL, to prove no broker or PostgreSQL process survives it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from service.embedded.kafka import KafkaBroker
from service.embedded.postgres import PostgresCluster
from service.testing.daemon_process import DaemonProcess


def test_hold(kafka_broker: KafkaBroker | None, postgres_cluster: PostgresCluster | None) -> None:
    assert kafka_broker is not None and kafka_broker.process is not None
    assert postgres_cluster is not None and postgres_cluster.process is not None
    report = Path(os.environ["ORPHAN_PROBE_REPORT"])
    daemon = DaemonProcess(
        env={
            "CONSUMERGEN_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
            "CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{report.parent / 'orphan.db'}",
        },
        log_dir=report.parent,
        name="orphan-probe",
    ).start()
    staging = report.with_suffix(".tmp")
    staging.write_text(
        json.dumps(
            {
                "kafka_pid": kafka_broker.process.pid,
                "postgres_pid": postgres_cluster.process.pid,
                "postgres_root": str(postgres_cluster.root),
                "pytest_pid": os.getpid(),
                "daemon_pid": daemon.pid,
            }
        )
    )
    staging.rename(report)  # atomic: the outer test never reads a half-written file
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # waiting to be killed by the outer test
        time.sleep(0.2)
    raise AssertionError("the outer test should have killed this run")
