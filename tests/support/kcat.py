"""Produce records with ``kcat`` (librdkafka), a Kafka client that is not aiokafka.

Why another client: aiokafka's producer cannot write some records that the broker
accepts (a header *name* that is not UTF-8: aiokafka encodes ``str`` names), and the
service must read what *any* producer writes, with every compression codec.

Usage::

    from tests.support.kcat import KcatRecord, produce

    produce(bootstrap, topic, [
        KcatRecord(key=b"k", value=b'{"a": 1}', headers=((b"\\xff\\xfe", b"v"),)),
        KcatRecord(key=None, value=None),            # null key, null value (tombstone)
    ], partition=0, codec="zstd")

Everything is raw **bytes**: keys, values, header names and values go to the wire
unchanged (they are passed to kcat as argv bytes or stdin bytes, never decoded).
``codec`` is one of ``CODECS`` ("none", "gzip", "snappy", "lz4", "zstd").
``partition`` None lets librdkafka's partitioner choose (by key).

Records are sent in order, ``acks=all``; ``produce`` returns once kcat exited after
delivering them, and raises ``KcatError`` (with kcat's stderr) otherwise.  Consecutive
records with the same headers are sent by one kcat run (so that they can share a
compressed batch); a run for records whose bytes contain the separators it uses
(0x1E, 0x1F) or whose key or value is None sends each record by itself.

Limits of kcat: a header name cannot contain ``=`` (kcat splits ``-H name=value`` at
the first one), a header value cannot be null, and an empty key is sent as no key.
Synchronous (it runs a subprocess): call it with ``asyncio.to_thread`` from a test
that must not block its event loop (e.g. while an in-process daemon runs).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Final

CODECS: Final = ("none", "gzip", "snappy", "lz4", "zstd")
_MESSAGE_SEP: Final = b"\x1e"
_KEY_SEP: Final = b"\x1f"


class KcatError(RuntimeError):
    """kcat failed (not installed, or it could not deliver); the message has its stderr."""


@dataclass(frozen=True)
class KcatRecord:
    """One record to produce: raw bytes throughout (see the module docstring)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes], ...] = ()


def kcat_binary() -> str:
    found = shutil.which("kcat") or shutil.which("kafkacat")
    if found is None:
        raise KcatError("kcat is not installed (scripts/bootstrap installs it from Debian)")
    return found


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[KcatRecord],
    *,
    partition: int | None = None,
    codec: str = "none",
    timeout: float = 60.0,
) -> None:
    """Send ``records`` to ``topic`` in order; see the module docstring."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, not {codec!r}")
    base: list[bytes] = [
        kcat_binary().encode(),
        b"-P",
        b"-q",
        b"-b",
        bootstrap.encode(),
        b"-t",
        topic.encode(),
        b"-X",
        b"acks=all",
        b"-X",
        b"linger.ms=50",
        b"-p",
        str(-1 if partition is None else partition).encode(),
    ]
    if codec != "none":
        base += [b"-z", codec.encode()]
    for headers, group in groupby(records, key=lambda r: r.headers):
        argv = list(base)
        for name, value in headers:
            if b"=" in name:
                raise ValueError("kcat cannot send a header name containing '='")
            argv += [b"-H", name + b"=" + value]
        batch = list(group)
        if all(_fits_stream(r) for r in batch):
            _stream(argv, batch, timeout)
        else:
            for record in batch:
                _single(argv, record, timeout)


def _fits_stream(record: KcatRecord) -> bool:
    if record.key is None or record.value is None or not record.key:
        return False
    data = record.key + record.value
    return _MESSAGE_SEP not in data and _KEY_SEP not in data


def _stream(argv: list[bytes], batch: Sequence[KcatRecord], timeout: float) -> None:
    payload = b"".join(r.key + _KEY_SEP + r.value + _MESSAGE_SEP for r in batch)  # type: ignore[operator]
    _run([*argv, b"-K", b"\\x1f", b"-D", b"\\x1e"], payload, timeout)


def _single(argv: list[bytes], record: KcatRecord, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="kcat-") as folder:
        path = Path(folder) / "value"
        path.write_bytes(record.value or b"")
        extra: list[bytes] = []
        if record.key:
            extra += [b"-k", record.key]
        if record.value is None:
            extra.append(b"-Z")
        _run([*argv, *extra, str(path).encode()], None, timeout)


def _run(argv: list[bytes], stdin: bytes | None, timeout: float) -> None:
    done = subprocess.run(
        argv,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0 or b"ERROR" in done.stderr:
        raise KcatError(
            f"kcat exited {done.returncode}: {done.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
