"""Retrying through stamina, counted in the daemon's own registry, stoppable.

stamina's instrumentation hooks are process-wide; they are set here explicitly
(``install_retry_hooks``): stamina's own Prometheus counter (the global registry, where
the apply path's CAS retries are read) and its structlog line, plus ``_count_in_daemon``,
which counts each retry in the registry of the daemon that is retrying.  Which daemon
that is comes from a context variable (``retry_scope``), set in the retrying task:
several daemons in one process (the tests run so) count apart.  Only retries of
infrastructure failures are counted there (a CAS loss inside the apply path, retried by
its own stamina loop, is not the infrastructure's and not this counter's business).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import stamina
from stamina.instrumentation import (
    PrometheusOnRetryHook,
    RetryDetails,
    StructlogOnRetryHook,
    set_on_retry_hooks,
)

from service.daemon.metrics import DaemonMetrics
from service.failures import is_infrastructure

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Scope:
    metrics: DaemonMetrics
    step: str
    on_retry: Callable[[RetryDetails], None] | None


_SCOPE: ContextVar[_Scope | None] = ContextVar("consumergen_retry_scope", default=None)
_installed = False


def _count_in_daemon(details: RetryDetails) -> None:
    scope = _SCOPE.get()
    if scope is None or not is_infrastructure(details.caused_by):
        return
    scope.metrics.retries.labels(scope.step).inc()
    if scope.on_retry is not None:
        scope.on_retry(details)


def install_retry_hooks() -> None:
    """Set stamina's hooks (once per process; see the module docstring)."""
    global _installed
    if not _installed:
        set_on_retry_hooks((PrometheusOnRetryHook, StructlogOnRetryHook, _count_in_daemon))
        _installed = True


@contextmanager
def retry_scope(
    metrics: DaemonMetrics,
    step: str,
    on_retry: Callable[[RetryDetails], None] | None = None,
) -> Iterator[None]:
    """Within this block (of this task), stamina's retries count as ``step`` in
    ``metrics`` and call ``on_retry`` (to log with the wait stamina chose)."""
    token = _SCOPE.set(_Scope(metrics, step, on_retry))
    try:
        yield
    finally:
        _SCOPE.reset(token)


async def retry_until_stopped(
    operation: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event,
    wait_initial: float,
    wait_max: float,
    interrupt_attempt: bool,
    retry_on: Callable[[BaseException], bool] = is_infrastructure,
    first_failure: Exception | None = None,
) -> tuple[bool, T | None]:
    """Run ``operation`` until it succeeds, retrying what ``retry_on`` accepts
    (infrastructure failures: ``failures.is_infrastructure``) with stamina's capped,
    jittered backoff, without end; ``(True, result)``.  Anything else propagates at once.

    A ``stop`` ends it with ``(False, None)``: at once during a wait, and during an
    attempt too when ``interrupt_attempt`` (a fetch may be cancelled; a client start is
    let finish, so that it never leaves a half-started client behind, and is then not
    retried).

    ``first_failure``: the caller made the first attempt itself and it failed so (the
    fetch loop's polls, ``service.daemon.fetch``): it is stamina's first attempt, counted,
    hooked and backed off from as if made here.
    """
    in_attempt = False

    def retried(error: BaseException) -> bool:
        return retry_on(error) and not stop.is_set()

    async def attempt_once() -> T:
        nonlocal in_attempt
        in_attempt = True
        try:
            return await operation()
        finally:
            in_attempt = False

    async def attempts() -> T:
        # The first attempt outside stamina (the fetch loop polls many times a second,
        # nearly always successfully); a failure to retry is stamina's first attempt,
        # so the hooks, counters and backoff are what they were (``step_retry`` too).
        first = first_failure
        if first is None:
            try:
                return await attempt_once()
            except Exception as exc:
                if not retried(exc):
                    raise
                first = exc
        async for attempt in stamina.retry_context(
            on=retried,
            attempts=None,
            timeout=None,
            wait_initial=wait_initial,
            wait_max=wait_max,
        ):
            with attempt:
                if first is not None:
                    replayed, first = first, None
                    raise replayed
                return await attempt_once()
        raise AssertionError("unreachable: retries are unbounded")  # pragma: no cover

    work = asyncio.create_task(attempts())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done() and (interrupt_attempt or not in_attempt):
            work.cancel()
        try:
            return True, await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            ours = current is not None and current.cancelling() > 0
            if work.cancelled() and stop.is_set() and not ours:
                return False, None  # we cancelled the attempt, for the stop
            raise
        except Exception as exc:
            if stop.is_set() and retry_on(exc):
                return False, None  # failed after the stop: not retried
            raise
    finally:
        for task in (work, stopped):
            task.cancel()
        await asyncio.gather(work, stopped, return_exceptions=True)
