"""Produce records with Kafka's own Java producer (``KafkaProducer`` from kafka-clients,
one of the broker's jars), a client that is not aiokafka.

Kafka's ``ConsoleProducer`` lives in the kafka-tools artifact, which is not among the
jars the embedded broker downloads; the small ``JavaProducer.java`` next to this file
is run as a single-file Java program on the broker's classpath instead.  One JVM per
call (it compiles the source in memory first, a few seconds): pass every record of a
test in one call.  Synchronous: call it with ``asyncio.to_thread`` from async tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.embedded.kafka import ensure_jars, java_executable

SOURCE = Path(__file__).with_name("JavaProducer.java")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


@dataclass(frozen=True)
class JavaRecord:
    """One record: raw bytes; ``partition`` None lets the partitioner choose."""

    key: bytes | None
    value: bytes
    codec: str = "none"
    partition: int | None = None


def produce(
    bootstrap: str, topic: str, records: Iterable[JavaRecord], *, timeout: float = 120.0
) -> None:
    """Send ``records`` in order (each with its codec), acks=all; raise on failure."""
    lines = []
    for r in records:
        if r.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, not {r.codec!r}")
        key = "-" if r.key is None else r.key.hex()
        where = -1 if r.partition is None else r.partition
        lines.append(f"{r.codec}\t{where}\t{key}\t{r.value.hex()}\n")
    done = subprocess.run(
        [java_executable(), "-cp", f"{ensure_jars()}/*", str(SOURCE), bootstrap, topic],
        input="".join(lines).encode("ascii"),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"Java producer exited {done.returncode}: "
            f"{done.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
