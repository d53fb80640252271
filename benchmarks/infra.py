"""The benchmark's own servers, databases, topics and daemon processes.

Everything is started here and stopped here: a Kafka broker from the project's own
launcher (``service.embedded.kafka``), a throwaway PostgreSQL cluster
(``service.embedded.postgres``) when PostgreSQL is measured, SQLite files in a
temporary folder, and daemons as ``python -m service run`` processes.  Nothing that
was already running is used, and nothing is left behind (every child is ended by its
own process id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.embedded._process import free_port
from service.embedded.kafka import KAFKA_VERSION, KafkaBroker
from service.embedded.postgres import PostgresCluster, create_database, find_bindir

REPO = Path(__file__).resolve().parents[1]


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class Infra:
    """One broker (always) and one PostgreSQL cluster (on demand) for a benchmark run."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="consumergen-bench-")))
    broker: KafkaBroker | None = None
    postgres: PostgresCluster | None = None
    _admin: AIOKafkaAdminClient | None = None
    daemons: list[DaemonProcess] = field(default_factory=list)

    # -- life cycle -------------------------------------------------------------------
    def start(self, postgres: bool) -> Infra:
        """Start the servers; on any failure, stop what did start and remove the folder."""
        try:
            return self._start(postgres)
        except BaseException:
            self.stop()
            raise

    def _start(self, postgres: bool) -> Infra:
        print(f"[infra] working folder {self.root}", flush=True)
        self.broker = KafkaBroker(self.root / "kafka", heap="1g")
        self.broker.start()
        print(
            f"[infra] Kafka {KAFKA_VERSION} on {self.broker.bootstrap_servers} "
            f"(started in {self.broker.started_in:.1f}s)",
            flush=True,
        )
        if postgres:
            # Its own top-level folder: the server may run as another user (root cannot).
            self.postgres = PostgresCluster(Path(tempfile.mkdtemp(prefix="consumergen-bench-pg-")))
            self.postgres.start()
            print(f"[infra] PostgreSQL on port {self.postgres.port}", flush=True)
        return self

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
        if self.postgres is not None:
            self.postgres.remove()
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Infra:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap_servers

    # -- topics -----------------------------------------------------------------------
    async def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self._admin.start()
        return self._admin

    async def close_admin(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()

    async def new_topic(self, prefix: str, partitions: int) -> str:
        admin = await self.admin()
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        await admin.create_topics([NewTopic(name, partitions, 1)])
        for _ in range(400):
            described = await admin.describe_topics([name])
            parts = described[0].get("partitions") or []
            if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
                return name
            await asyncio.sleep(0.05)
        raise RuntimeError(f"topic {name} has no leaders")

    async def committed_total(self, group: str, topic: str) -> int:
        admin = await self.admin()
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)

    # -- databases --------------------------------------------------------------------
    async def fresh_database(self, kind: str) -> str:
        """A new empty database URL (``sqlite`` file or ``postgres`` database)."""
        if kind == "sqlite":
            folder = self.root / f"sqlite-{uuid.uuid4().hex[:8]}"
            folder.mkdir()
            return f"sqlite+aiosqlite:///{folder / 'consumergen.sqlite3'}"
        assert self.postgres is not None, "PostgreSQL was not started"
        return await create_database(self.postgres.url(), prefix="bench")

    async def drop_database(self, url: str) -> None:
        """Free the disk of a finished run (the cluster lives in a temporary folder)."""
        if url.startswith("sqlite"):
            shutil.rmtree(Path(url.split(":///", 1)[1]).parent, ignore_errors=True)
            return
        import asyncpg

        assert self.postgres is not None
        name = url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(_plain(self.postgres.url()))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    # -- daemons ----------------------------------------------------------------------
    def daemon(self, name: str, **settings: object) -> DaemonProcess:
        env = {f"CONSUMERGEN_{key.upper()}": str(value) for key, value in settings.items()}
        env.setdefault("CONSUMERGEN_BOOTSTRAP_SERVERS", self.bootstrap)
        process = DaemonProcess(name=name, env=env, log=self.root / f"{name}.log")
        self.daemons.append(process)
        return process


@dataclass
class DaemonProcess:
    """``python -m service run`` with JSON logs to a file and a health port."""

    name: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    started_at: float = 0.0

    def start(self) -> DaemonProcess:
        self.health_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
        env.update(self.env)
        env["CONSUMERGEN_HEALTH_PORT"] = str(self.health_port)
        env.setdefault("CONSUMERGEN_LOG_FORMAT", "json")
        env.setdefault("CONSUMERGEN_LOG_REDACTION_KEY", "benchmark")
        env["PYTHONPATH"] = str(REPO)
        command = [sys.executable, "-m", "service", "run"]
        profile_dir = os.environ.get("BENCHMARKS_PROFILE_DIR")
        if profile_dir:  # pyinstrument (the "bench" extra): a text profile per daemon
            report = Path(profile_dir) / f"{self.name}.txt"
            command[1:1] = ["-m", "pyinstrument", "-r", "text", "-o", str(report)]
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO),
            )
        self.started_at = time.time()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def readiness(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return dict(json.loads(error.read()))
        except OSError:
            return None

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"daemon {self.name} exited with {self.process.returncode}:\n{self.tail()}"
            )

    async def wait_assigned(self, within: float = 90) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.check_alive()
            body = await asyncio.to_thread(self.readiness)
            if body and int(body.get("assigned_partitions") or 0) > 0:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"daemon {self.name} got no partitions in {within}s:\n{self.tail()}")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        events.append(json.loads(line))
        return events

    def assigned_at(self) -> float | None:
        """Wall-clock time of the first "partitions assigned" log line."""
        for event in self.log_events():
            if event.get("event") == "partitions assigned" and event.get("timestamp"):
                moment = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
                return moment.timestamp()
        return None

    def rss_kib(self) -> int:
        return _status_field(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_field(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    async def stop(self, within: float = 60) -> None:
        """SIGTERM (graceful) and wait; SIGKILL if it does not go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def machine_description(postgres: bool) -> dict[str, str]:
    """Cores, RAM, CPU model and the versions of everything measured."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import aiokafka
    import sqlalchemy

    description = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "kafka": f"Apache Kafka {KAFKA_VERSION} (KRaft, single node, embedded launcher)",
        "aiokafka": aiokafka.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    if postgres:
        with contextlib.suppress(Exception):
            out = subprocess.run(
                [str(find_bindir() / "postgres"), "--version"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            description["postgresql"] = out
    return description
