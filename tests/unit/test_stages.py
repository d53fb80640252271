"""The per-stage clock (``service.daemon.stages``): a stage that awaits is charged only
its own CPU, not the CPU other tasks burn meanwhile; errors and cancellation pass through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.daemon.metrics import DaemonMetrics
from service.daemon.stages import STAGES, StageClock


def _clock() -> tuple[StageClock, CollectorRegistry]:
    registry = CollectorRegistry()
    wall = Counter("t_stage_seconds", "wall", ["stage"], registry=registry)
    cpu = Counter("t_stage_cpu_seconds", "cpu", ["stage"], registry=registry)
    return StageClock(wall, cpu), registry


def _value(registry: CollectorRegistry, name: str, stage: str) -> float:
    value = registry.get_sample_value(name, {"stage": stage})
    assert value is not None
    return value


def _burn(seconds: float) -> None:
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass


@pytest.mark.asyncio
async def test_an_awaiting_stage_is_charged_its_own_cpu_only() -> None:
    clock, registry = _clock()
    other_done = asyncio.Event()

    async def other_task() -> None:
        _burn(0.2)  # runs while the stage below waits: not the stage's CPU
        other_done.set()

    async def stage() -> str:
        _burn(0.05)  # the stage's own work
        await other_done.wait()
        return "result"

    other = asyncio.create_task(other_task())
    assert await clock.timed("apply", stage()) == "result"
    await other
    cpu = _value(registry, "t_stage_cpu_seconds_total", "apply")
    wall = _value(registry, "t_stage_seconds_total", "apply")
    assert 0.05 <= cpu < 0.2
    assert wall >= 0.25


@pytest.mark.asyncio
async def test_a_failing_or_cancelled_stage_is_counted_and_passes_it_on() -> None:
    clock, registry = _clock()

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await clock.timed("send", failing())
    assert _value(registry, "t_stage_seconds_total", "send") > 0

    started = asyncio.Event()

    async def waiting() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(clock.timed("commit", waiting()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _value(registry, "t_stage_seconds_total", "commit") > 0


def test_a_sync_stage_and_every_label_is_preset() -> None:
    metrics = DaemonMetrics()
    with metrics.stages.sync("admit"):
        _burn(0.01)
    registry = metrics.registry
    assert _value(registry, "consumergen_stage_cpu_seconds_total", "admit") >= 0.01
    for stage in STAGES:  # exported at zero before any batch: dashboards see every stage
        assert (
            registry.get_sample_value("consumergen_stage_seconds_total", {"stage": stage})
            is not None
        )
        assert (
            registry.get_sample_value("consumergen_stage_cpu_seconds_total", {"stage": stage})
            is not None
        )


async def test_the_seconds_charged_are_the_stages_own_and_no_more() -> None:
    """Upper bounds too: an awaited stage's wall and CPU seconds are what it took (a
    dashboard sums them per stage), whether it returns or fails after working."""
    clock, registry = _clock()

    async def working_then_failing() -> None:
        _burn(0.05)
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await clock.timed("send", working_then_failing())
    assert 0.05 <= _value(registry, "t_stage_cpu_seconds_total", "send") < 5
    assert 0.05 <= _value(registry, "t_stage_seconds_total", "send") < 5

    async def sleeping() -> str:
        await asyncio.sleep(0.1)
        return "slept"

    assert await clock.timed("commit", sleeping()) == "slept"
    assert 0.1 <= _value(registry, "t_stage_seconds_total", "commit") < 5
    assert _value(registry, "t_stage_cpu_seconds_total", "commit") < 0.1


def test_a_sync_stage_is_charged_its_wall_and_its_cpu_and_no_more() -> None:
    clock, registry = _clock()
    with clock.sync("admit"):
        _burn(0.05)
        time.sleep(0.1)  # wall, not CPU
    assert 0.05 <= _value(registry, "t_stage_cpu_seconds_total", "admit") < 0.1
    assert 0.15 <= _value(registry, "t_stage_seconds_total", "admit") < 5


def test_a_timed_stage_closed_before_it_ends_closes_what_it_awaits() -> None:
    """A stage abandoned without being resumed (its task garbage-collected, a
    generator closed) closes the coroutine it times, so that coroutine's ``finally``
    runs (a transaction rolled back, a connection released) instead of a "never
    awaited" warning later."""
    clock, _ = _clock()
    cleaned: list[str] = []

    class Pending:
        def __await__(self) -> Generator[None, None, None]:
            yield None

    async def stage() -> None:
        try:
            await Pending()
        finally:
            cleaned.append("finally ran")

    timed = stage()  # held here too: its close must not wait for the garbage collector
    steps = clock.timed("apply", timed).__await__()
    next(steps)  # the stage now waits on its first suspension
    steps.close()
    assert cleaned == ["finally ran"]
    assert timed.cr_frame is None  # closed, not merely unreferenced


async def test_cpu_is_summed_over_every_step_and_never_more_than_the_thread_spent() -> None:
    """A stage that works between several suspensions is charged the sum of its steps
    (not only its last one), and no stage is ever charged more CPU than the thread
    spent while it ran, whether it returns or fails (the clock's readings are
    differences, never sums of two readings)."""
    clock, registry = _clock()

    async def working_in_steps() -> str:
        _burn(0.03)
        await asyncio.sleep(0)
        _burn(0.03)
        await asyncio.sleep(0)
        return "done"

    before = time.thread_time()
    assert await clock.timed("apply", working_in_steps()) == "done"
    spent = time.thread_time() - before
    assert 0.06 <= _value(registry, "t_stage_cpu_seconds_total", "apply") <= spent

    async def failing_at_once() -> None:
        raise ValueError("boom")

    before = time.thread_time()
    with pytest.raises(ValueError, match="boom"):
        await clock.timed("send", failing_at_once())
    spent = time.thread_time() - before
    assert 0 <= _value(registry, "t_stage_cpu_seconds_total", "send") <= spent


def test_an_exception_thrown_into_a_timed_stage_reaches_the_coroutine_it_awaits() -> None:
    """Whatever the task throws into a waiting stage (a cancellation at a bare
    suspension, where no cancelled future tells the stage on its own) goes into the
    timed coroutine, which may handle it, rather than resuming it as if nothing came."""
    clock, _ = _clock()

    class Suspension:
        def __await__(self) -> Generator[None, None, None]:
            yield None  # as ``asyncio.sleep(0)`` does: nothing to read a result from

    async def stage() -> str:
        try:
            await Suspension()
        except ValueError as exc:
            return f"handled {exc}"
        return "resumed as if nothing came"

    steps = clock.timed("apply", stage()).__await__()
    next(steps)  # the stage waits on its suspension
    with pytest.raises(StopIteration) as stop:
        steps.throw(ValueError("thrown in"))
    assert stop.value.value == "handled thrown in"


def test_a_timed_awaitable_without_close_is_abandoned_quietly() -> None:
    """An awaitable's iterator need only have ``send`` and ``throw`` (the iterator
    protocol of ``await``): abandoning a stage that awaits one closes the stage without
    an error of its own."""
    clock, _ = _clock()

    class Step:
        """An ``await`` iterator with no ``close``: waits once, then returns 7."""

        def __init__(self) -> None:
            self.waited = False

        def __iter__(self) -> Step:
            return self

        def __next__(self) -> None:
            return self.send(None)

        def send(self, value: object) -> None:
            if self.waited:
                raise StopIteration(7)
            self.waited = True

        def throw(self, exc: BaseException) -> None:
            raise exc

    class WithoutClose:
        def __await__(self) -> Step:
            return Step()

    awaited = WithoutClose()
    steps: Generator[object, None, object]
    steps = clock.timed("apply", awaited).__await__()  # type: ignore[arg-type]
    next(steps)
    assert not hasattr(Step(), "close")
    steps.close()  # no AttributeError from looking for the iterator's close
