"""Run ``python -m service run`` counting the event loop's work, for ``small-batches --counts``.

``python benchmarks/loop_counts.py -m service run``: the daemon, with the loop's
iterations, the callbacks it ran, the tasks and timers it made and the garbage
collector's runs counted, and the counts written every 0.2 s to the file named by
``BENCHMARKS_LOOP_COUNTS`` (a JSON object).  A small batch's cost is mostly such fixed
work (issue 22), so the benchmark divides these by the events of a phase.

The counting wrappers cost CPU themselves: a counted run's CPU is not quoted, only its
counts (``benchmarks.small_batches`` measures CPU in runs without this wrapper).  It is
a script run by path, so it works for a daemon from any source tree (the A/B runs'
older tree has no such module).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

COUNTS: defaultdict[str, float] = defaultdict(float)


def _patch() -> None:
    events = asyncio.events
    base = asyncio.base_events.BaseEventLoop
    run_once = base._run_once  # type: ignore[attr-defined]
    create_task = base.create_task
    call_at = base.call_at
    call_soon = base.call_soon
    call_soon_threadsafe = base.call_soon_threadsafe
    handle_run = events.Handle._run

    def counted_run_once(self: Any) -> None:
        COUNTS["loop iterations"] += 1
        run_once(self)

    def counted_create_task(self: Any, coro: Any, **kwargs: Any) -> Any:
        COUNTS["tasks created"] += 1
        return create_task(self, coro, **kwargs)

    def counted_call_at(self: Any, when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["timers"] += 1
        return call_at(self, when, callback, *args, **kwargs)

    def counted_call_soon(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["call_soon"] += 1
        return call_soon(self, callback, *args, **kwargs)

    def counted_threadsafe(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["call_soon_threadsafe"] += 1
        return call_soon_threadsafe(self, callback, *args, **kwargs)

    def counted_handle_run(self: Any) -> None:
        COUNTS["callbacks run"] += 1
        handle_run(self)

    for owner, name, wrapper in (
        (base, "_run_once", counted_run_once),
        (base, "create_task", counted_create_task),
        (base, "call_at", counted_call_at),
        (base, "call_soon", counted_call_soon),
        (base, "call_soon_threadsafe", counted_threadsafe),
        (events.Handle, "_run", counted_handle_run),
    ):
        setattr(owner, name, wrapper)

    began = [0.0]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.thread_time()
        else:
            COUNTS[f"gc generation {info['generation']}"] += 1
            ms = (time.thread_time() - began[0]) * 1e3
            COUNTS[f"gc generation {info['generation']} CPU ms"] += ms

    gc.callbacks.append(collected)


def _writer(path: Path) -> None:
    while True:
        snapshot: dict[str, float] = dict(COUNTS)
        snapshot["written at"] = time.time()
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot))
        temporary.replace(path)
        time.sleep(0.2)


def _profile_on_signals(folder: Path) -> None:
    """SIGUSR1 starts cProfile on the loop's thread, SIGUSR2 stops it and writes
    ``folder/phase-N.pstats``: the benchmark brackets a phase with them."""
    import cProfile

    state: dict[str, Any] = {"profile": None, "phase": 0}

    def start(*_: object) -> None:
        state["profile"] = cProfile.Profile(time.thread_time)  # CPU, not wall
        state["profile"].enable()

    def stop(*_: object) -> None:
        profile = state["profile"]
        if profile is None:
            return
        profile.disable()
        state["phase"] += 1
        profile.dump_stats(str(folder / f"phase-{state['phase']}.pstats"))
        state["profile"] = None

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> None:
    del sys.path[0]  # this script's folder: the daemon imports from its own tree only
    _patch()
    target = os.environ.get("BENCHMARKS_LOOP_COUNTS")
    if target:
        threading.Thread(target=_writer, args=(Path(target),), daemon=True).start()
    profiles = os.environ.get("BENCHMARKS_PROFILE_PHASES")
    if profiles:
        _profile_on_signals(Path(profiles))
    if sys.argv[1:3] != ["-m", "service"]:
        raise SystemExit("usage: loop_counts.py -m service run")
    sys.argv = ["service", *sys.argv[3:]]
    runpy.run_module("service", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
