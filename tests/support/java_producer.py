"""Produce records with Kafka's own Java producer (``KafkaProducer`` from kafka-clients,
one of the broker's jars), a client that is not aiokafka.

Kafka's ``ConsoleProducer`` lives in the kafka-tools artifact, which is not among the
jars the embedded broker downloads; the tiny ``JavaProducer.java`` next to this file is
run as a single-file Java program on the broker's classpath instead.  Synchronous (a
subprocess; the first run compiles the source in memory, ~2 s).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from service.embedded.kafka import ensure_jars, java_executable

SOURCE = Path(__file__).with_name("JavaProducer.java")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    partition: int | None = None,
    codec: str = "none",
    timeout: float = 120.0,
) -> None:
    """Send (key, value) records in order, acks=all, compressed with ``codec``."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}")
    where = -1 if partition is None else partition
    lines = "".join(
        f"{where}\t{'-' if key is None else key.hex()}\t{value.hex()}\n" for key, value in records
    )
    done = subprocess.run(
        [java_executable(), "-cp", f"{ensure_jars()}/*", str(SOURCE), bootstrap, topic, codec],
        input=lines.encode("ascii"),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"Java producer exited {done.returncode}: "
            f"{done.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
