"""The daemon's stamina retries (``service/daemon/retries.py``): counted in the daemon's
own registry, and ended by a stop (at once while waiting; after the attempt when an
attempt must not be cut short)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace

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


# --- the hooks: set once per process ------------------------------------------------------


@pytest.fixture
def no_hooks_yet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process in which no daemon has set stamina's hooks yet (another test, or mutation
    testing's parent process, may have), and its hooks put back afterwards."""
    before = get_on_retry_hooks()
    monkeypatch.setattr(retries, "_installed", False)
    set_on_retry_hooks(())
    try:
        yield
    finally:
        set_on_retry_hooks(before)


def _fails_then_works(failures: int) -> Callable[[], Awaitable[str]]:
    calls = {"n": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise KafkaConnectionError("not yet")
        return "done"

    return flaky


@pytest.mark.usefixtures("no_hooks_yet")
async def test_the_first_install_makes_retries_count_in_the_daemons_registry() -> None:
    metrics = DaemonMetrics()
    install_retry_hooks()
    with retry_scope(metrics, "commit"):
        result = await retry_until_stopped(
            _fails_then_works(1),
            stop=asyncio.Event(),
            wait_initial=0.01,
            wait_max=0.02,
            interrupt_attempt=True,
        )
    assert result == (True, "done")
    assert metrics.registry.get_sample_value("consumergen_retries_total", {"step": "commit"}) == 1


@pytest.mark.usefixtures("no_hooks_yet")
def test_a_second_install_leaves_the_processs_hooks_as_they_are() -> None:
    """Once per process: a second daemon started in the same process does not reset
    hooks set since the first (an embedding application's own)."""
    install_retry_hooks()

    def own_hook(details: RetryDetails) -> None:
        del details

    set_on_retry_hooks((own_hook,))
    install_retry_hooks()
    assert get_on_retry_hooks() == (own_hook,)


# --- the backoff: from wait_initial, without a time limit ---------------------------------


async def test_the_first_wait_is_wait_initial() -> None:
    """stamina's backoff starts at the daemon's ``wait_initial`` (not stamina's own
    default of 0.1 s): seen in the wait stamina chose for the first retry, capped at
    ``wait_max`` (jitter included).  The stop set in the hook ends the wait at once."""
    install_retry_hooks()
    stop = asyncio.Event()
    waits: list[float] = []

    def heard(details: RetryDetails) -> None:
        waits.append(details.wait_for)
        stop.set()

    with retry_scope(DaemonMetrics(), "fetch", on_retry=heard):
        result = await asyncio.wait_for(
            retry_until_stopped(
                _fails_then_works(5),
                stop=stop,
                wait_initial=7.0,
                wait_max=7.0,
                interrupt_attempt=True,
            ),
            5,
        )
    assert result == (False, None)
    assert waits == [7.0]


async def test_retries_never_end_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon retries the infrastructure for as long as it is down: stamina's own
    45 s timeout is off.  tenacity's clock (which stamina's timeout reads) is made to run
    a minute per reading here, so that 45 s pass between any two attempts."""
    minutes = itertools.count()
    monkeypatch.setattr(tenacity, "time", SimpleNamespace(monotonic=lambda: 60.0 * next(minutes)))
    result = await asyncio.wait_for(
        retry_until_stopped(
            _fails_then_works(4),
            stop=asyncio.Event(),
            wait_initial=0.001,
            wait_max=0.002,
            interrupt_attempt=True,
        ),
        5,
    )
    assert result == (True, "done")
    assert next(minutes) > 4  # the clock was read: its minutes did pass


async def test_a_stop_in_the_backoff_after_the_callers_own_failed_attempt_ends_it_at_once() -> None:
    """The fetch loop made the first attempt itself (``first_failure``): a stop during the
    backoff that follows ends the retry at once even where an attempt in flight would be
    let finish (``interrupt_attempt=False``), since no attempt is in flight."""
    stop = asyncio.Event()
    attempts: list[None] = []

    async def start() -> str:
        attempts.append(None)
        return "started"

    asyncio.get_running_loop().call_later(0.1, stop.set)
    result = await asyncio.wait_for(
        retry_until_stopped(
            start,
            stop=stop,
            wait_initial=30,
            wait_max=30,
            interrupt_attempt=False,
            first_failure=KafkaConnectionError("the caller's poll failed"),
        ),
        5,
    )
    assert result == (False, None)
    assert attempts == []


# --- no task left behind ------------------------------------------------------------------


def _others() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_an_answer_leaves_no_task_of_its_own_behind() -> None:
    result = await retry_until_stopped(
        _fails_then_works(0),
        stop=asyncio.Event(),
        wait_initial=0.01,
        wait_max=0.02,
        interrupt_attempt=True,
    )
    assert result == (True, "done")
    assert _others() == set()


async def test_a_cancelled_caller_finds_its_attempt_ended_and_no_task_left() -> None:
    """A shutdown cancels the task retrying: by the time the cancellation reaches it,
    the attempt has run its own clean-up (a fetch leaves the consumer idle), however
    many steps that takes, and nothing of the retry is still scheduled."""
    in_flight = asyncio.Event()
    cleaned: list[None] = []

    async def fetch() -> None:
        try:
            in_flight.set()
            await asyncio.Event().wait()
        finally:
            for _ in range(50):  # a clean-up of many steps
                await asyncio.sleep(0)
            cleaned.append(None)

    async def caller() -> None:
        await retry_until_stopped(
            fetch, stop=asyncio.Event(), wait_initial=0.01, wait_max=0.02, interrupt_attempt=True
        )

    waiting = asyncio.create_task(caller())
    await asyncio.wait_for(in_flight.wait(), 5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert cleaned == [None]
    assert _others() == set()
