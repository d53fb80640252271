"""Liveness, readiness and metrics over HTTP.

A WSGI server in a daemon thread keeps the endpoints answering even when the event
loop is busy with a large batch, which is exactly when an orchestrator asks.
prometheus-client renders the metrics; we only route.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

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
        """Alive while the event loop's heartbeat is fresh (read off the loop)."""
        beat = self.last_beat
        if beat is None:
            return True, {"alive": True, "heartbeat_age_seconds": None}
        age = (time.monotonic() if now is None else now) - beat
        alive = age <= self.stale_after
        return alive, {
            "alive": alive,
            "heartbeat_age_seconds": round(age, 3),
            "stale_after_seconds": self.stale_after,
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
            alive, detail = self._readiness.live_verdict()
            return _json(start_response, "200 OK" if alive else "503 Service Unavailable", detail)
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
