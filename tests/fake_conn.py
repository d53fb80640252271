"""aiokafka's ``create_conn`` faked where the service dials one broker directly (the
connection diagnosis of ``service.daemon.startup`` and ``service.kafka.tls``): what a
broker that answers, refuses or never answers looks like to them, without a broker."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest


class Conn:
    """A connection that was made; the diagnosis must close it."""

    closed = False

    def close(self) -> None:
        self.closed = True


Call = tuple[str, int, dict[str, Any], Conn]


def fake_create_conn(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, outcome: BaseException | str | None
) -> list[Call]:
    """``module``'s ``create_conn`` raises ``outcome``, hangs (``"hang"``) or connects
    (None: a broker that answers); each call is recorded with its connection."""
    calls: list[Call] = []

    async def create_conn(host: str, port: int, **options: Any) -> Conn:
        conn = Conn()
        calls.append((host, port, options, conn))
        if outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome
        return conn

    monkeypatch.setattr(module, "create_conn", create_conn)
    return calls
