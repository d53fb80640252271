"""The daemon's stamina retries (``service/daemon/retries.py``): counted in the daemon's
own registry, and ended by a stop (at once while waiting; after the attempt when an
attempt must not be cut short)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import pytest
import tenacity
from aiokafka.errors import KafkaConnectionError
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from service.daemon import retries
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


async def test_a_stop_cancels_an_attempt_that_may_be_cut_short() -> None:
    """A fetch in flight at a stop (``interrupt_attempt``) is cancelled, not waited for."""
    stop = asyncio.Event()
    cancelled = []

    async def endless_fetch() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    asyncio.get_running_loop().call_later(0.1, stop.set)
    result = await asyncio.wait_for(
        retry_until_stopped(
            endless_fetch, stop=stop, wait_initial=0.01, wait_max=0.02, interrupt_attempt=True
        ),
        5,
    )
    assert result == (False, None)
    assert cancelled == [True]


async def test_an_attempt_that_succeeds_after_the_stop_is_kept() -> None:
    """A client start in flight at a stop is let finish; when it worked, its result is
    the answer (the caller then owns the started client and closes it)."""
    stop = asyncio.Event()

    async def start() -> str:
        stop.set()
        await asyncio.sleep(0.05)
        return "started"

    result = await retry_until_stopped(
        start, stop=stop, wait_initial=0.01, wait_max=0.02, interrupt_attempt=False
    )
    assert result == (True, "started")


async def test_a_caller_cancelled_at_a_stop_is_cancelled_not_answered() -> None:
    """Cancelling the task that waits (a shutdown) cancels it even when a stop came
    first and it was waiting for the attempt in flight: only a cancellation made for the
    stop is turned into ``(False, None)``; the caller's own is never swallowed."""
    stop = asyncio.Event()
    in_flight = asyncio.Event()

    async def slow_start() -> None:
        stop.set()
        in_flight.set()
        await asyncio.sleep(30)

    waiting = asyncio.create_task(
        retry_until_stopped(
            slow_start, stop=stop, wait_initial=0.01, wait_max=0.02, interrupt_attempt=False
        )
    )
    await in_flight.wait()
    await asyncio.sleep(0.05)  # the stop seen; the attempt let finish: it is waited for
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)


async def test_only_what_retry_on_accepts_is_retried() -> None:
    calls = {"n": 0}

    async def refused_twice() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ValueError("not yet")
        return "done"

    def values(error: Exception) -> bool:
        return isinstance(error, ValueError)

    result = await retry_until_stopped(
        refused_twice,
        stop=asyncio.Event(),
        wait_initial=0.01,
        wait_max=0.02,
        interrupt_attempt=True,
        retry_on=values,
    )
    assert result == (True, "done")
    assert calls["n"] == 3

    async def down() -> None:
        raise KafkaConnectionError("down")

    with pytest.raises(KafkaConnectionError):
        await retry_until_stopped(
            down,
            stop=asyncio.Event(),
            wait_initial=0.01,
            wait_max=0.02,
            interrupt_attempt=True,
            retry_on=values,
        )


async def test_a_failure_after_the_stop_is_not_retried_a_bug_after_it_still_propagates() -> None:
    stop = asyncio.Event()

    async def bug_at_the_stop() -> None:
        stop.set()
        await asyncio.sleep(0.01)
        raise RuntimeError("ours")

    with pytest.raises(RuntimeError):
        await retry_until_stopped(
            bug_at_the_stop, stop=stop, wait_initial=0.01, wait_max=0.02, interrupt_attempt=False
        )


class Flaky:
    """Fails on the infrastructure ``failures`` times, then returns ``"done"``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaConnectionError("down")
        return "done"


@pytest.fixture
def scheduled() -> Iterator[list[RetryDetails]]:
    """Every retry stamina schedules meanwhile, with the wait it chose (``wait_for``)."""
    install_retry_hooks()
    previous = get_on_retry_hooks()
    seen: list[RetryDetails] = []
    set_on_retry_hooks([*previous, seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(previous)


async def test_the_hooks_are_installed_once_a_process_and_count_in_the_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a fresh process (stamina's default hooks, nothing installed yet) the first
    ``install_retry_hooks`` makes retries count in the daemon's registry; a second one
    (another daemon of the process) changes nothing: a hook added meanwhile stays."""
    previous = get_on_retry_hooks()
    monkeypatch.setattr(retries, "_installed", False)
    set_on_retry_hooks(None)
    try:
        install_retry_hooks()
        metrics = DaemonMetrics()
        with retry_scope(metrics, "fetch"):
            result = await retry_until_stopped(
                Flaky(1),
                stop=asyncio.Event(),
                wait_initial=0.001,
                wait_max=0.001,
                interrupt_attempt=True,
            )
        assert result == (True, "done")
        counted = metrics.registry.get_sample_value("consumergen_retries_total", {"step": "fetch"})
        assert counted == 1
        seen: list[RetryDetails] = []
        set_on_retry_hooks([*get_on_retry_hooks(), seen.append])
        install_retry_hooks()
        await retry_until_stopped(
            Flaky(1),
            stop=asyncio.Event(),
            wait_initial=0.001,
            wait_max=0.001,
            interrupt_attempt=True,
        )
        assert len(seen) == 1
    finally:
        set_on_retry_hooks(previous)


async def test_the_backoff_starts_at_wait_initial_and_doubles_up_to_wait_max(
    scheduled: list[RetryDetails], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's waits, not stamina's defaults (0.1 s, 5 s): seen with stamina's random
    jitter at its least (0), the first wait is ``wait_initial``, each next one twice the
    last, never more than ``wait_max``."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    result = await retry_until_stopped(
        Flaky(4), stop=asyncio.Event(), wait_initial=0.01, wait_max=0.03, interrupt_attempt=True
    )
    assert result == (True, "done")
    assert [d.wait_for for d in scheduled] == pytest.approx([0.01, 0.02, 0.03, 0.03])


class _HourPerReading:
    """A monotonic clock that runs an hour each time it is read."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        self.now += 3600.0
        return self.now


async def test_retries_go_on_for_as_long_as_the_infrastructure_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No time limit (stamina's default gives up after 45 s): only a stop ends it.  The
    retries' clock (tenacity's, which stamina's time limit reads) runs an hour per
    reading here; the waits themselves are real and short."""
    monkeypatch.setattr(tenacity, "time", _HourPerReading())
    operation = Flaky(3)
    result = await retry_until_stopped(
        operation,
        stop=asyncio.Event(),
        wait_initial=0.001,
        wait_max=0.001,
        interrupt_attempt=False,
    )
    assert result == (True, "done")
    assert operation.calls == 4


async def test_a_stop_while_backing_off_from_a_failure_handed_in_ends_it_at_once() -> None:
    """The caller made the first attempt (``first_failure``); the stop comes during the
    backoff after it, before any attempt here: nothing is in flight to let finish, so it
    ends at once, even though attempts are not to be cut short."""
    stop = asyncio.Event()
    operation = Flaky(0)
    asyncio.get_running_loop().call_later(0.1, stop.set)
    result = await asyncio.wait_for(
        retry_until_stopped(
            operation,
            stop=stop,
            wait_initial=30,
            wait_max=60,
            interrupt_attempt=False,
            first_failure=KafkaConnectionError("down"),
        ),
        10,
    )
    assert result == (False, None)
    assert operation.calls == 0


async def test_a_cancelled_caller_ends_only_once_its_attempt_has_let_go() -> None:
    """Cancelling the waiting task (a shutdown) cancels the attempt in flight and waits
    for it to end: nothing of it runs on behind the caller's back (a client half
    started, a fetch still reading)."""
    started = asyncio.Event()
    let_go: list[bool] = []

    async def cleans_up_when_cancelled() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # closing what it had open
            let_go.append(True)

    waiting = asyncio.create_task(
        retry_until_stopped(
            cleans_up_when_cancelled,
            stop=asyncio.Event(),
            wait_initial=0.01,
            wait_max=0.02,
            interrupt_attempt=True,
        )
    )
    await started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 10)
    assert let_go == [True]
