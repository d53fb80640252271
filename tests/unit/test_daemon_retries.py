"""The daemon's stamina retries (``service/daemon/retries.py``): counted in the daemon's
own registry, and ended by a stop (at once while waiting; after the attempt when an
attempt must not be cut short)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaConnectionError

from service.daemon.metrics import DaemonMetrics
from service.daemon.retries import install_retry_hooks, retry_scope, retry_until_stopped


async def test_retries_are_counted_in_the_daemons_registry_until_it_works() -> None:
    install_retry_hooks()
    metrics, other = DaemonMetrics(), DaemonMetrics()
    calls = {"n": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise KafkaConnectionError("not yet")
        return "done"

    with retry_scope(metrics, "fetch"):
        result = await retry_until_stopped(
            flaky, stop=asyncio.Event(), wait_initial=0.01, wait_max=0.02, interrupt_attempt=True
        )
    assert result == (True, "done")
    assert metrics.registry.get_sample_value("consumergen_retries_total", {"step": "fetch"}) == 2
    # The other daemon's series exists (label values are pre-set) but counted nothing.
    assert other.registry.get_sample_value("consumergen_retries_total", {"step": "fetch"}) == 0


async def test_a_stop_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()

    async def down() -> None:
        raise KafkaConnectionError("down")

    asyncio.get_running_loop().call_later(0.2, stop.set)
    began = time.monotonic()
    result = await retry_until_stopped(
        down, stop=stop, wait_initial=30, wait_max=60, interrupt_attempt=False
    )
    assert result == (False, None)
    assert time.monotonic() - began < 5


async def test_an_attempt_in_flight_is_let_finish_and_not_retried() -> None:
    stop = asyncio.Event()
    finished = []

    async def slow_failure() -> None:
        stop.set()
        await asyncio.sleep(0.1)
        finished.append(True)
        raise KafkaConnectionError("down")

    result = await retry_until_stopped(
        slow_failure, stop=stop, wait_initial=0.01, wait_max=0.02, interrupt_attempt=False
    )
    assert result == (False, None)
    assert finished == [True]


async def test_a_bug_propagates_at_once() -> None:
    async def bug() -> None:
        raise RuntimeError("ours")

    with pytest.raises(RuntimeError):
        await retry_until_stopped(
            bug, stop=asyncio.Event(), wait_initial=0.01, wait_max=0.02, interrupt_attempt=True
        )
