"""Liveness, readiness and metrics over HTTP.

The server (``service.daemon.http_server``: aiohttp on a thread and event loop of its
own) keeps the endpoints answering while the daemon's loop is busy with a large batch,
which is exactly when an orchestrator asks.  The read API has a server of its own
(``service.daemon.read_api``), so 200 readers at once cannot queue a probe behind them.
prometheus-client renders the metrics; we only route.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.daemon.http_server import HttpServer
from service.daemon.metrics import DaemonMetrics


@dataclass
class Readiness:
    """What readiness is made of; written by the event loop, read by the HTTP thread.

    Two sources feed it: the daemon's probes (can the broker and the database be
    reached at all?) and the partition workers (which partitions are paused because a
    step failed, and on what).  Each source only ever clears what it set, so a probe
    that succeeds cannot hide a partition that is still retrying, and vice versa.
    """

    started: bool = False
    assigned: int = 0
    broker_reachable: bool = True
    database_reachable: bool = True
    #: partition label -> "database" | "broker": partitions paused by a failing step.
    failing: dict[str, str] = field(default_factory=dict)
    stopping: bool = False
    #: The latest infrastructure error, for an operator reading /readyz (no secrets).
    last_error: str | None = None
    #: ``time.monotonic()`` of the event loop's latest heartbeat (``daemon.liveness``);
    #: None until the loop first beats (the daemon is starting: alive).
    last_beat: float | None = None
    #: How old that heartbeat may be before /livez fails (the loop is wedged).
    stale_after: float = 30.0
    #: What stands still for longer than the stall bound (``daemon.stalls``): "fetch
    #: loop" and partition labels; /livez fails while any does.
    stalled: tuple[str, ...] = ()

    @property
    def paused(self) -> set[str]:
        return set(self.failing)

    @property
    def database_ok(self) -> bool:
        return self.database_reachable and "database" not in dict(self.failing).values()

    @property
    def broker_ok(self) -> bool:
        return self.broker_reachable and "broker" not in dict(self.failing).values()

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        failing = dict(self.failing)  # one consistent copy (the loop may be writing)
        database_ok = self.database_reachable and "database" not in failing.values()
        broker_ok = self.broker_reachable and "broker" not in failing.values()
        # Able to work, not "working now": a member without partitions (more replicas
        # than partitions, or between rebalances) is ready, or a rolling update stalls.
        ready = self.started and database_ok and broker_ok and not failing and not self.stopping
        return ready, {
            "ready": ready,
            "started": self.started,
            "assigned_partitions": self.assigned,
            "database_ok": database_ok,
            "broker_ok": broker_ok,
            "paused_partitions": sorted(failing),
            "stopping": self.stopping,
            "last_error": None if ready else self.last_error,
        }

    def live_verdict(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """Alive while the event loop's heartbeat is fresh (read off the loop) and
        nothing stands still (``stalled``, written by the loop's probes)."""
        stalled = list(self.stalled)  # one consistent copy (the loop may be writing)
        beat = self.last_beat
        detail: dict[str, Any]
        if beat is None:
            detail = {"alive": not stalled, "heartbeat_age_seconds": None}
        else:
            age = (time.monotonic() if now is None else now) - beat
            detail = {
                "alive": age <= self.stale_after and not stalled,
                "heartbeat_age_seconds": round(age, 3),
                "stale_after_seconds": self.stale_after,
            }
        if stalled:
            detail["stalled"] = stalled
        return bool(detail["alive"]), detail


class HealthServer(HttpServer):
    """``/livez`` (``/healthz``), ``/readyz`` and ``/metrics``."""

    def __init__(self, host: str, port: int, readiness: Readiness, metrics: DaemonMetrics):
        self._readiness = readiness
        self._registry = metrics.registry
        super().__init__(host, port, self._install, name="health-http")

    def _install(self, app: web.Application) -> None:
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/healthz", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)

    async def _livez(self, request: web.Request) -> web.Response:
        alive, detail = self._readiness.live_verdict()
        return web.json_response(detail, status=200 if alive else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = self._readiness.verdict()
        return web.json_response(detail, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
