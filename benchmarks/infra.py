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
import os
import platform
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.embedded.kafka import KAFKA_VERSION, KafkaBroker
from service.embedded.postgres import PostgresCluster, create_database, find_bindir
from service.testing.daemon_process import DaemonProcess
from service.testing.database import asyncpg_url

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Infra:
    """One broker (always) and one PostgreSQL cluster (on demand) for a benchmark run."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="consumergen-bench-")))
    broker: KafkaBroker | None = None
    postgres: PostgresCluster | None = None
    _admin: AIOKafkaAdminClient | None = None
    daemons: list[DaemonProcess] = field(default_factory=list)
    #: Settings every daemon of the run gets unless its caller names them (a benchmark
    #: option such as ``e2e --sqlite-synchronous``).
    daemon_defaults: dict[str, object] = field(default_factory=dict)

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
            # Durable (fsync, synchronous_commit, full_page_writes on), as a user's server
            # is: the tests' fast settings would flatter every PostgreSQL figure.
            self.postgres = PostgresCluster(
                Path(tempfile.mkdtemp(prefix="consumergen-bench-pg-")), durable=True
            )
            self.postgres.start()
            settings = ", ".join(f"{k}={v}" for k, v in self.postgres.durability_settings.items())
            print(f"[infra] PostgreSQL on port {self.postgres.port} ({settings})", flush=True)
        return self

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
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
        conn = await asyncpg.connect(asyncpg_url(self.postgres.url()))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    # -- daemons ----------------------------------------------------------------------
    def daemon(self, name: str, **settings: object) -> DaemonProcess:
        merged = {**self.daemon_defaults, **settings}
        env = {f"CONSUMERGEN_{key.upper()}": str(value) for key, value in merged.items()}
        env.setdefault("CONSUMERGEN_BOOTSTRAP_SERVERS", self.bootstrap)
        env.setdefault("CONSUMERGEN_LOG_REDACTION_KEY", "benchmark")
        # The benchmark's PostgreSQL is a throwaway cluster (fsync off unless it was
        # started durable): its daemons accept that, which production ones refuse.
        env.setdefault("CONSUMERGEN_POSTGRESQL_ALLOW_COMMIT_LOSS_ON_CRASH", "true")
        env["PYTHONPATH"] = str(REPO)
        profile: list[str] = []
        profile_dir = os.environ.get("BENCHMARKS_PROFILE_DIR")
        if profile_dir:  # pyinstrument (the "bench" extra): a text profile per daemon
            report = Path(profile_dir) / f"{name}.txt"
            profile = ["-m", "pyinstrument", "-r", "text", "-o", str(report)]
        process = DaemonProcess(env, self.root, name=name, python_args=profile, cwd=REPO)
        self.daemons.append(process)
        return process


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
        description["postgresql_settings"] = (
            "fsync=on, synchronous_commit=on, full_page_writes=on (durable, as a user's "
            "server; the tests' embedded cluster runs them off)"
        )
    description["sqlite_settings"] = (
        "the service's own PRAGMAs (WAL; synchronous as service/store/dialects/sqlite.py sets it)"
    )
    return description
