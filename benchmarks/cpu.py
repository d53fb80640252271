"""CPU seconds used by a process and its children (Linux /proc), for "where did the cores go"."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu_seconds(pid: int | None) -> float:
    """utime+stime of ``pid``, of its reaped children, and of its live direct children."""
    if pid is None:
        return 0.0
    fields = _stat(pid)
    if fields is None:
        return 0.0
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        child = _stat(int(entry.name))
        if child is not None and child[1] == str(pid):
            with contextlib.suppress(ValueError):
                total += int(child[11]) + int(child[12])
    return total / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle, all cores together, since boot (/proc/stat)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICK
