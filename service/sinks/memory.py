"""In-memory sinks: everything written is kept in a list, in order.

Public, for tests (drive the daemon's partition worker without a broker) and for anyone
embedding the service who wants the results in process.  ``fail_next`` makes the next
writes raise ``SinkUnavailable`` (an outage the daemon must ride out: nothing may be
committed meanwhile); ``fail_with`` raises any exception instead (a bug).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.sinks.base import DeadLetter, OutcomeMessage, SinkUnavailable


class _Failing:
    def __init__(self) -> None:
        #: How many of the next writes fail with ``SinkUnavailable``.
        self.unavailable_for = 0
        #: When set, every write raises it (until cleared).
        self.error: BaseException | None = None
        #: Every write attempted, including the failed ones.
        self.attempts = 0
        self.written = asyncio.Event()

    def fail_next(self, writes: int = 1) -> None:
        self.unavailable_for = writes

    def fail_with(self, error: BaseException | None) -> None:
        self.error = error

    def _attempt(self) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        if self.unavailable_for > 0:
            self.unavailable_for -= 1
            raise SinkUnavailable("in-memory sink told to be unavailable", kind="sink")


class MemoryDeadLetterSink(_Failing):
    """``DeadLetterSink`` keeping the letters in ``letters``."""

    def __init__(self) -> None:
        super().__init__()
        self.letters: list[DeadLetter] = []

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self._attempt()
        self.letters.extend(letters)
        self.written.set()


class MemoryOutcomeSink(_Failing):
    """``OutcomeSink`` keeping the outcome records in ``messages``."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[OutcomeMessage] = []

    async def write_outcomes(self, messages: Sequence[OutcomeMessage]) -> None:
        self._attempt()
        self.messages.extend(messages)
        self.written.set()
