"""Tools for sending hostile records to a real broker and watching a daemon survive them.

Records are written with a raw aiokafka producer (no service code), to an explicit
partition, with any key, value and headers.  A header *name* that is not UTF-8 cannot
be written through aiokafka's public API (it encodes names as UTF-8), yet the broker
accepts it and other clients (librdkafka's ``kcat``) write it: ``RawName`` carries raw
bytes through aiokafka's pure-Python batch builder, so the broker stores exactly those
bytes.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from service.daemon.app import Daemon

_PARTITIONER = DefaultPartitioner()


def partition_of(key: bytes, partitions: int) -> int:
    """The partition aiokafka's (and Java's) default partitioner gives ``key``."""
    every = list(range(partitions))
    return int(_PARTITIONER(key, every, every))


def uuid_on(partition: int, partitions: int, rng: random.Random | None = None) -> str:
    """A canonical consumer UUID whose key lands on ``partition``."""
    rng = rng or random.Random()
    while True:
        candidate = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if partition_of(candidate.encode(), partitions) == partition:
            return candidate


class RawName(str):
    """A header name whose bytes on the wire are ``raw`` (need not be UTF-8)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@dataclass
class Raw:
    """One record to send; ``headers`` names may be ``RawName``."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    #: What the test expects: "valid" (fed to the model) or "invalid:<reasons|...>".
    expect: str = "valid"
    doc: dict[str, Any] | None = None
    kind: str = ""
    offset: int = -1


def record_size(key: bytes | None, value: bytes | None, headers: list[Any]) -> int:
    """Bytes of one record inside a batch (without the batch's own header)."""
    return int(_DefaultRecordBatchBuilderPy.size_of(key, value, headers))


def _raw_names(record: Raw) -> bool:
    """Needs the pure-Python builder: a raw header name, or a header with no value."""
    return any(isinstance(name, RawName) or value is None for name, value in record.headers)


async def produce_records(
    bootstrap: str,
    topic: str,
    records: Sequence[Raw],
    max_request_size: int = 4 * 1_048_576,
    raw_names_via_kcat: bool = False,
) -> None:
    """Send every record in order (per partition), acks=all; sets each ``offset``.

    Records with raw header names go through a pure-Python batch builder of their own
    (one batch each), or, with ``raw_names_via_kcat`` and kcat installed, through
    librdkafka's kcat (a client that is not aiokafka); the others through ``send``.
    Order is kept: what was sent before is acknowledged before a raw one goes.
    """
    use_kcat = raw_names_via_kcat and shutil.which("kcat") is not None
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=max_request_size,
        linger_ms=5,
        max_batch_size=1_048_576,
    )
    await producer.start()
    try:
        pending: list[tuple[Raw, asyncio.Future[Any]]] = []
        for record in records:
            if _raw_names(record):
                # Keep the partition's order: what was sent before must be written first.
                await _settle(pending)
                if use_kcat and any(isinstance(n, RawName) for n, _ in record.headers):
                    # argv cannot hold NUL; kcat sends no empty name, no "=" in one, no null value.
                    # (NUL in a value becomes "0"; unsendable names are left out.)
                    record.headers = [
                        (n, (v or b"").replace(b"\x00", b"0"))
                        for n, v in record.headers
                        if n and "\x00" not in n and "=" not in n
                    ]
                    assert any(isinstance(n, RawName) for n, _ in record.headers)
                    await kcat_records(bootstrap, topic, [record], "none")
                    continue
                batch = producer.create_batch()
                batch._builder = _DefaultRecordBatchBuilderPy(
                    2,
                    0,
                    is_transactional=0,
                    producer_id=-1,
                    producer_epoch=-1,
                    base_sequence=0,
                    batch_size=max_request_size,
                )
                assert (
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=None,
                        headers=record.headers,
                    )
                    is not None
                )
                future = await producer.send_batch(batch, topic, partition=record.partition)
                pending.append((record, future))
                await _settle(pending)
            else:
                future = await producer.send(
                    topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers) or None,
                    partition=record.partition,
                )
                pending.append((record, future))
        await _settle(pending)
    finally:
        await producer.stop()


async def _settle(pending: list[tuple[Raw, asyncio.Future[Any]]]) -> None:
    for record, future in pending:
        metadata = await future
        record.offset = int(metadata.offset)
    pending.clear()


async def kcat_records(bootstrap: str, topic: str, records: Sequence[Raw], codec: str) -> None:
    """Send with librdkafka's kcat (not aiokafka), one run per record, each to its
    partition; sets each ``offset`` (the partition's end before the run: nothing else
    writes to it meanwhile).  Header names are raw bytes (``RawName`` or UTF-8)."""
    from service.testing.kafka_io import end_offsets
    from tests.support.kcat import kcat_binary

    for record in records:
        record.offset = (await end_offsets(bootstrap, topic))[record.partition]
        argv = [
            kcat_binary().encode(),
            *(b"-P", b"-q", b"-b", bootstrap.encode(), b"-t", topic.encode()),
            *(b"-p", str(record.partition).encode(), b"-X", b"acks=all"),
            # librdkafka checks the uncompressed size against this; the broker the batch's.
            *(b"-X", b"message.max.bytes=16000000"),
        ]
        if codec != "none":
            argv += [b"-z", codec.encode()]
        for name, value in record.headers:
            raw = name.raw if isinstance(name, RawName) else name.encode()
            argv += [b"-H", raw + b"=" + (value or b"")]
        if record.key is not None:
            argv += [b"-k", record.key]
        with tempfile.TemporaryDirectory(prefix="kcat-") as folder:
            path = Path(folder) / "value"
            path.write_bytes(record.value or b"")
            done = await asyncio.to_thread(
                subprocess.run, [*argv, str(path).encode()], capture_output=True, timeout=60
            )
        assert done.returncode == 0 and b"ERROR" not in done.stderr, done.stderr[-2000:]
        after = (await end_offsets(bootstrap, topic))[record.partition]
        assert after == record.offset + 1, "kcat did not write exactly one record"


def daemon_task(daemon: Daemon) -> asyncio.Task[Any]:
    """The task running ``daemon.run`` (started by ``running_daemon``)."""
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_locals.get("self") is daemon:
            return task
    raise AssertionError("no task runs this daemon")


def alive(daemon: Daemon, task: asyncio.Task[Any]) -> bool:
    return not task.done() and daemon.fatal_error is None and not daemon.readiness.stopping


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_readyz, port)


class ReadySampler:
    """Samples ``/readyz`` every ``every`` seconds until stopped; keeps every answer."""

    def __init__(self, port: int, every: float = 0.05) -> None:
        self.port = port
        self.every = every
        self.samples: list[tuple[float, int, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            status, body = await readyz(self.port)
            self.samples.append((time.monotonic(), status, body))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def not_ready(self) -> list[tuple[int, dict[str, Any]]]:
        return [(status, body) for _, status, body in self.samples if status != 200]


def header_map(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Last value wins; values decoded leniently (the daemon's own headers are UTF-8)."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers}
