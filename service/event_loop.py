"""Which asyncio event loop the daemon runs on: the standard one, or uvloop.

uvloop (the optional ``fast`` extra) is a drop-in loop on libuv; it is chosen with
``CONSUMERGEN_EVENT_LOOP=uvloop``.  Asking for it without the extra installed fails at
start naming the setting, rather than silently running on the other loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from service.config import ConfigError, Settings

T = TypeVar("T")


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory ``asyncio.Runner`` should use (None: the standard loop)."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "CONSUMERGEN_EVENT_LOOP=uvloop needs uvloop: install the 'fast' extra "
            "(pip install 'consumer-generation-service[fast]')"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop the settings choose."""
    try:
        factory = loop_factory(settings)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
