"""Liveness, readiness and metrics over HTTP.

A WSGI server in a daemon thread keeps the endpoints answering even when the event
loop is busy with a large batch, which is exactly when an orchestrator asks.
prometheus-client renders the metrics; we only route.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from service.daemon.metrics import DaemonMetrics


@dataclass
class Readiness:
    """What readiness is made of; written by the event loop, read by the HTTP thread."""

    started: bool = False
    assigned: int = 0
    database_ok: bool = True
    broker_ok: bool = True
    paused: set[str] = field(default_factory=set)
    stopping: bool = False

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        ready = (
            self.started
            and self.assigned > 0
            and self.database_ok
            and self.broker_ok
            and not self.paused
            and not self.stopping
        )
        return ready, {
            "ready": ready,
            "started": self.started,
            "assigned_partitions": self.assigned,
            "database_ok": self.database_ok,
            "broker_ok": self.broker_ok,
            "paused_partitions": sorted(self.paused),
            "stopping": self.stopping,
        }


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the logs; stay silent."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


StartResponse = Callable[..., Any]


class HealthServer:
    def __init__(self, host: str, port: int, readiness: Readiness, metrics: DaemonMetrics):
        self._readiness = readiness
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server = make_server(
            host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path in ("/livez", "/healthz"):
            return _json(start_response, "200 OK", {"alive": True})
        if path == "/readyz":
            ready, detail = self._readiness.verdict()
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable", detail)
        return _json(start_response, "404 Not Found", {"error": "try /livez, /readyz, /metrics"})


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]
