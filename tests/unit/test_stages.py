"""The per-stage clock (``service.daemon.stages``): a stage that awaits is charged only
its own CPU, not the CPU other tasks burn meanwhile; errors and cancellation pass through."""

from __future__ import annotations

import asyncio
import time

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
