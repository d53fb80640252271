"""An aiohttp server on a thread and an event loop of its own.

The daemon's HTTP endpoints must answer while its event loop is busy applying a large
batch, and nothing they do may stall that loop: each server here runs ``asyncio.run`` in
its own thread (``start`` returns once the socket is bound, ``stop`` once it is closed),
and serves its requests concurrently on that loop.  Its routes are installed by a
callback, in that thread, so that whatever they open (an engine and its pool) is bound
to the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = structlog.get_logger(__name__)

#: Installs a server's routes (and its startup/cleanup hooks) on its application.
RoutesFactory = Callable[[web.Application], None]
#: Paths asked every few seconds by orchestrators and scrapers: not access-logged.
_QUIET: frozenset[str] = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})


class HttpServer:
    def __init__(self, host: str, port: int, install: RoutesFactory, *, name: str) -> None:
        self._host = host
        self._requested_port = port
        self._install = install
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the HTTP server is not started")
        return self._port

    def start(self) -> None:
        """Bind and serve; raises what binding raised (e.g. the port is taken)."""
        self._thread.start()
        self._bound.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the server's own loop, from any thread.

        The tests wedge a server's loop with it (a callback that blocks) to prove that
        the other servers and the daemon's loop go on without it.
        """
        if self._loop is None:
            raise RuntimeError("the HTTP server is not started")
        self._loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            # The loop may close in between: then there is nothing left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

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
        app = web.Application(middlewares=[_not_found_as_json])
        self._install(app)
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


@web.middleware
async def _not_found_as_json(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"error": "no such path"}, status=404)
    return response


class AccessLogger(AbstractAccessLogger):
    """One line per request but the probes' and scrapes'.

    The path goes through structlog, whose redaction replaces a consumer UUID in it by
    its pseudonym like everywhere else; no header (Authorization) is ever logged.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in _QUIET:
            return
        log.info(
            "http request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round(time * 1000, 2),
        )

    @property
    def enabled(self) -> bool:
        return True
