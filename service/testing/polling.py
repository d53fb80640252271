"""Wait for a condition that a concurrent daemon makes true, with a deadline and a reason."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def poll(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float,
    what: str,
    every: float = 0.1,
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took, fails after ``within``."""
    began = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - began
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(every)
