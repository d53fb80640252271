"""Which partition a keyed record goes to: Kafka's default partitioner, only faster.

The sinks place each outcome record on the partition the Java client's (and aiokafka's)
default partitioner would choose (``murmur2(key) & 0x7fffffff % partitions``), so that
any client can find an event's outcome by its key.  aiokafka's ``murmur2`` works a byte
at a time in Python; one record per event makes that a per-event cost on the daemon's hot
path, so this reads the key four bytes at a time.  Same results, bit for bit: a property
test compares it with aiokafka's own on arbitrary bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (unsigned 32 bits, as aiokafka returns it)."""
    length = len(data)
    h = _SEED ^ length
    for k in struct.unpack_from(f"<{length >> 2}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest:
        tail = length & ~3
        if rest >= 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of ``partitions`` (sorted ids) the default partitioner gives ``key``."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
