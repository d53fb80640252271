"""A throwaway PostgreSQL cluster from the machine's PostgreSQL binaries.

``initdb`` refuses to run as root, so when we are root the cluster is made and run
as the ``postgres`` system user (or ``nobody``).  The server listens on 127.0.0.1
only, on a free port, with its socket in the cluster folder, and gets a parent-death
signal (SIGQUIT, PostgreSQL's immediate shutdown) so it cannot outlive its starter.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.embedded.process import die_with_parent, free_port, stop_process, wait_until

SUPERUSER = "consumergen"
DATABASE = "consumergen"


def find_bindir() -> Path:
    """The newest PostgreSQL ``bin`` folder: ``$PG_BINDIR``, Debian's layout, or PATH."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL binaries found (set PG_BINDIR to the folder with initdb)")


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, but there is no 'postgres' or 'nobody' user for initdb")


@dataclass
class PostgresCluster:
    """One cluster in ``root`` (created by ``start``, removed by ``remove``); ``durable``
    keeps PostgreSQL's own fsync, synchronous_commit and full_page_writes (on)."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0
    #: False (tests): fsync, synchronous_commit and full_page_writes off, because a
    #: throwaway cluster's durability is not what tests measure.  True (benchmarks): the
    #: server's durable defaults, what a user's PostgreSQL runs with, so that the
    #: figures compared with it are honest.
    durable: bool = False

    @property
    def durability_settings(self) -> dict[str, str]:
        """The server settings that decide durability, as this cluster runs them."""
        value = "on" if self.durable else "off"
        return {"fsync": value, "synchronous_commit": value, "full_page_writes": value}

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = DATABASE, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        began = time.monotonic()
        bindir = find_bindir()
        account = _run_as()
        self.root.mkdir(parents=True, exist_ok=True)
        if account is not None:
            os.chown(self.root, account.pw_uid, account.pw_gid)
        uid = account.pw_uid if account else None
        gid = account.pw_gid if account else None
        groups: list[int] | None = [] if account else None
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                check=False,
                cwd=self.root,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
            if initdb.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        self.port = self.port or free_port()
        log = self.log_file.open("ab")
        if account is not None:
            os.chown(self.log_file, account.pw_uid, account.pw_gid)
        try:
            self.process = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                    *(
                        argument
                        for name, value in self.durability_settings.items()
                        for argument in ("-c", f"{name}={value}")
                    ),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGQUIT),
                start_new_session=True,
                cwd=self.root,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        finally:
            log.close()
        isready = str(bindir / "pg_isready")

        def ready() -> bool:
            probe = subprocess.run(
                [isready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER],
                check=False,
            )
            return probe.returncode == 0

        wait_until(ready, self.process, timeout, "PostgreSQL", self.log_file)
        created = subprocess.run(
            [
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                DATABASE,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(f"createdb failed: {created.stderr}")
        self.started_in = time.monotonic() - began
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): abort sessions, checkpoint, exit."""
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, timeout)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def create_database(server_url: str, prefix: str = "db") -> str:
    """Create a fresh, empty database on the server of ``server_url`` (an asyncpg URL of
    a user allowed to CREATE DATABASE) and return its URL: one per test or benchmark run,
    so that nothing leaks between them while the server is started only once."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    await _administer(server_url, f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(server_url: str, database_url: str) -> None:
    """Drop a database ``create_database`` made (its open connections are ended), so a
    long-lived server that serves many runs does not fill up with them."""
    name = database_url.rsplit("/", 1)[1]
    await _administer(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _administer(server_url: str, statement: str) -> None:
    """One statement that cannot run in a transaction (CREATE/DROP DATABASE), on a
    connection of its own to the server of ``server_url``."""
    import asyncpg

    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A fresh cluster in a temporary folder for the block, removed afterwards."""
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="consumergen-pg-")))
    try:
        yield cluster.start()
    finally:
        cluster.remove()


def main() -> None:
    """Run a throwaway cluster in the foreground until Ctrl-C or SIGTERM; it is removed on
    exit. (SIGTERM too: a script's background job, or anything started under nohup,
    ignores SIGINT, and scripts/mutation stops its cluster with SIGTERM.)"""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with running_cluster() as cluster:
        print(f"PostgreSQL at {cluster.url()} (Ctrl-C stops and removes it)", flush=True)
        try:
            assert cluster.process is not None
            cluster.process.wait()
        except KeyboardInterrupt:
            pass


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
