"""Liveness, readiness and metrics over HTTP, and the read API beside them.

The server is aiohttp's, run in a thread of its own with an event loop of its own
(``HealthServer``): the endpoints keep answering while the daemon's loop is busy with a
large batch, which is exactly when an orchestrator asks, and nothing they do (a slow
database read of ``/v1/consumers``, 200 clients at once) can stall the apply loop.
aiohttp serves many requests concurrently on that loop; prometheus-client renders the
metrics; we only route.  The read API (``service.daemon.read_api``) has its own
read-only engine, built on the server's loop, so it never shares a connection pool
(or the loop that pool is bound to) with the applier.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.daemon.metrics import DaemonMetrics
from service.daemon.read_api import AccessLogger


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
        ready = (
            self.started
            and self.assigned > 0
            and database_ok
            and broker_ok
            and not failing
            and not self.stopping
        )
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


#: Builds the read API's routes on the server's own loop (``read_api.ReadApi``); called
#: in the server thread, so an engine it creates is bound to that thread's loop.
RoutesFactory = Callable[[web.Application], None]


class HealthServer:
    """``/livez``, ``/readyz``, ``/metrics`` (and the read API when given) on a thread of
    their own; ``start`` returns once the socket is bound, ``stop`` once it is closed."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        metrics: DaemonMetrics,
        *,
        routes: RoutesFactory | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._readiness = readiness
        self._registry = metrics.registry
        self._routes = routes
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the health server is not started")
        return self._port

    def start(self) -> None:
        """Bind and serve; raises what binding raised (e.g. the port is taken)."""
        self._thread.start()
        self._bound.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            # The loop may close in between: then there is nothing left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    # -- the server thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), which raises it in its thread
            if not self._bound.is_set():
                self._error = exc
                self._bound.set()
            else:
                raise

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/healthz", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self._routes is not None:
            self._routes(app)
        app.middlewares.append(_not_found_as_json)
        runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port, reuse_address=True)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._bound.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = self._readiness.verdict()
        return web.json_response(detail, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _not_found_as_json(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPNotFound:
        return web.json_response(
            {"error": "try /livez, /readyz, /metrics, /v1/consumers/{uuid}"}, status=404
        )
    return response
