"""Where a batch's time goes: wall and event-loop CPU seconds per stage, per batch.

Every change to the hot path must show its effect, so the daemon accounts its own time
per stage (``consumergen_stage_seconds_total`` and ``consumergen_stage_cpu_seconds_total``,
label ``stage``) and the benchmark reads them from ``/metrics``.  It is cheap: two clock
reads per stage per batch, plus two per suspension of an awaited stage.  (Issue 22
checked: the thread CPU clock is a system call, about 0.7 µs here, and a lone event's
batch makes about twenty, some 15 µs of the 4 ms of CPU such an event costs; samplers
that see the thread on the run queue, pyinstrument and py-spy, charge these calls with
the time the thread waits after them for a core on a busy machine, which is not CPU.
Once per stage per batch would charge a stage with the other tasks' CPU while it
waits, which ``tests/unit/test_stages.py`` forbids.)

CPU is the event loop thread's (``time.thread_time``), and for a stage that awaits it is
counted only while *that stage's own coroutine* runs: the loop runs other partitions'
work while a stage waits, and that CPU is theirs.  What no stage owns (aiokafka's
background fetcher and sender tasks, aiosqlite's worker thread running SQLite itself,
logging, the garbage collector) is not in any stage: the benchmark reports it as the
process's CPU minus the stages' sum.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Generator, Iterable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from prometheus_client import Counter

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from service.daemon.timeline import Timeline

T = TypeVar("T")

#: The stages, in the order a batch goes through them.
STAGES: Final = (
    "fetch",  # getmany: the fetcher's records unpacked and handed out
    "admit",  # decode + validate every record (dead-letter headers of invalid ones)
    "apply",  # plan + SQL, one transaction per batch when possible
    "encode",  # outcome records and the dead letters of failed events
    "send",  # dead letters and outcome records written, until acknowledged
    "commit",  # the offset commit, until the coordinator answered
    "account",  # the committed batch's metrics and log line
)


class StageClock:
    """Adds wall and CPU seconds to the two per-stage counters."""

    def __init__(self, wall: Counter, cpu: Counter) -> None:
        self._wall = {stage: wall.labels(stage) for stage in STAGES}
        self._cpu = {stage: cpu.labels(stage) for stage in STAGES}
        #: Per-event wall-clock stamps for the benchmarks (``service.daemon.timeline``);
        #: None (the default) costs the worker one check per batch boundary.
        self.timeline: Timeline | None = None

    def stamp(self, boundary: str, records: Iterable[ConsumerRecord]) -> None:
        """Records crossed a boundary (``service.daemon.timeline``); nothing when off."""
        if self.timeline is not None:
            self.timeline.stamp(boundary, records)

    @contextmanager
    def sync(self, stage: str) -> Generator[None, None, None]:
        """Time a stage that does not await (all its CPU is its own)."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self._cpu[stage].inc(time.thread_time() - cpu)
            self._wall[stage].inc(time.perf_counter() - wall)

    async def timed(self, stage: str, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, timing its wall time and the CPU of its own steps."""
        steps: _OwnSteps[T] = _OwnSteps(awaitable)
        wall = time.perf_counter()
        try:
            return await steps
        finally:
            self._cpu[stage].inc(steps.cpu)
            self._wall[stage].inc(time.perf_counter() - wall)


class _OwnSteps(Generic[T]):
    """Awaits a coroutine step by step, summing the thread CPU of its steps only."""

    __slots__ = ("_awaitable", "cpu")

    def __init__(self, awaitable: Awaitable[T]) -> None:
        self._awaitable = awaitable
        self.cpu = 0.0

    def __await__(self) -> Generator[Any, Any, T]:
        inner = self._awaitable.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            began = time.thread_time()
            try:
                yielded = inner.throw(thrown) if thrown is not None else inner.send(sent)
            except StopIteration as stop:
                self.cpu += time.thread_time() - began
                result: T = stop.value
                return result
            except BaseException:
                self.cpu += time.thread_time() - began
                raise
            self.cpu += time.thread_time() - began
            thrown = None
            try:
                sent = yield yielded
            except GeneratorExit:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as exc:  # cancellation and the like: into the inner one
                thrown, sent = exc, None
