"""``run_daemon``: the daemon as a process, stopped by SIGTERM/SIGINT.

The first signal stops gracefully (in-flight batches finish within the grace period
and are committed); a second one exits at once with status 130 (nothing more is
committed; what was not, comes again and the inbox makes it duplicates).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.daemon.app import Daemon
from service.daemon.liveness import install_stall_hook
from service.daemon.log_limits import limit_library_repeats

log = structlog.get_logger(__name__)


async def run_daemon(settings: Settings, engine: AsyncEngine) -> int:
    """Run until SIGTERM/SIGINT; a second signal exits at once (nothing more is committed)."""
    limit_library_repeats()
    daemon = Daemon(settings, engine)
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting at once", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("stop requested", signal=signal.Signals(signum).name)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    stall_hook = install_stall_hook(loop)  # a test hook: only with its variable set
    began = time.monotonic()
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if stall_hook:
            loop.remove_signal_handler(signal.SIGUSR1)
    if daemon.fatal_error is not None:
        log.error(
            "daemon exited after an internal error", error_class=type(daemon.fatal_error).__name__
        )
        return 1
    log.info("daemon exited", seconds=round(time.monotonic() - began, 1))
    return 0
