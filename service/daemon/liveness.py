"""Liveness: a heartbeat the event loop stamps, and a test hook that stalls the loop.

``/livez`` is answered off the event loop (so it answers while a large batch runs);
that alone cannot notice a *wedged* loop (a blocking call, a busy loop in a
callback).  So a task on the daemon's loop stamps ``time.monotonic()`` into
``Readiness.last_beat`` every ``beat_interval(settings)``; the health endpoint reads
the stamp and fails once it is older than ``CONSUMERGEN_LIVENESS_STALE_SECONDS``, and
the orchestrator restarts the process.  A loop that is merely busy with awaits keeps
beating: only one that stopped scheduling goes stale.

The stall hook exists for the tests that prove this: with
``CONSUMERGEN_TEST_STALL_LOOP_SECONDS`` set, SIGUSR1 makes the daemon's loop
``time.sleep`` that long.  Nothing installs it unless that variable is set.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import structlog

from service.config import ConfigError, Settings
from service.daemon.health import Readiness

log = structlog.get_logger(__name__)

#: Test hook: seconds the loop sleeps (blocking) on SIGUSR1; unset in production.
STALL_HOOK_VARIABLE = "CONSUMERGEN_TEST_STALL_LOOP_SECONDS"


def beat_interval(settings: Settings) -> float:
    """Often enough that a healthy loop is never near the stale bound."""
    return min(1.0, settings.liveness_stale_seconds / 4)


async def heartbeat(readiness: Readiness, interval: float) -> None:
    """Stamp the loop's progress until cancelled."""
    while True:
        readiness.last_beat = time.monotonic()
        await asyncio.sleep(interval)


def install_stall_hook(loop: asyncio.AbstractEventLoop) -> bool:
    """The test hook (see the module docstring); True if it was installed."""
    value = os.environ.get(STALL_HOOK_VARIABLE)
    if not value:
        return False
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{STALL_HOOK_VARIABLE}: not a number of seconds: {value!r}") from None

    def stall() -> None:
        log.warning("test hook: stalling the event loop", seconds=seconds)
        time.sleep(seconds)  # deliberately blocking: this is what the hook is for
        log.warning("test hook: event loop released")

    loop.add_signal_handler(signal.SIGUSR1, stall)
    log.warning("test hook installed: SIGUSR1 stalls the event loop", variable=STALL_HOOK_VARIABLE)
    return True
