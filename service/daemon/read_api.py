"""``GET /v1/consumers/{uuid}``: a consumer's current state, for producers that hold no
database credentials (the read half of their read-modify-write loop).

It is served by an HTTP server of its own (``service.daemon.http_server``: its own
thread and loop, ``CONSUMERGEN_READ_API_HOST``/``_PORT``), apart from the probes, with a
read-only engine of its own built on that loop: a slow read waits for a connection of
that pool, never for the applier's, never on the daemon's event loop, and 200 readers
at once do not queue a ``/readyz`` behind them.  Answers:

* 200 with ``consumer_uuid``, the ``state_document`` fields (``state``: live or
  deleted, ``generation``, ``project_id``, ``user_id``, ``consumer_type``) and
  ``updated_at``; a tombstone is a 200 with ``state: deleted`` (its generation matters
  to the next create);
* 404 for a consumer the database never saw; 400 for a path that is not a UUID;
* 401 when tokens are configured and the request lacks a bearer token that is one
  of them (``service.daemon.read_tokens``: several at once for rotation, kept hashed,
  compared in constant time, never logged);
* 503 when the database cannot answer now (the client may retry).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from service.contract.records import utc_timestamp
from service.contract.state import state_document
from service.daemon.http_server import HttpServer
from service.daemon.read_tokens import ReadApiTokens
from service.logging.redaction import canonical_uuid
from service.store.errors import describe, is_transient
from service.store.reads import get_consumer

log = structlog.get_logger(__name__)

CONSUMER_PATH = "/v1/consumers/{uuid}"
_ENGINE: web.AppKey[AsyncEngine] = web.AppKey("read_api_engine", AsyncEngine)


class ReadApi:
    """The read routes; ``install`` is its ``HttpServer``'s routes hook."""

    def __init__(
        self, engine: Callable[[], AsyncEngine], tokens: ReadApiTokens | SecretStr | None
    ) -> None:
        self._make_engine = engine
        if tokens is None or isinstance(tokens, SecretStr):
            tokens = ReadApiTokens([] if tokens is None else [tokens.get_secret_value()])
        self._tokens = tokens

    def install(self, app: web.Application) -> None:
        app.router.add_get(CONSUMER_PATH, self._consumer)
        app.cleanup_ctx.append(self._engine_context)

    async def _engine_context(self, app: web.Application):  # type: ignore[no-untyped-def]
        app[_ENGINE] = self._make_engine()  # on the server's loop: its pool is bound there
        yield
        await app[_ENGINE].dispose()

    def _authorised(self, request: web.Request) -> bool:
        if not self._tokens.required:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Hashed and compared with every token even for a wrong scheme: same work.
        accepted = self._tokens.accepts(given.strip())
        return scheme.lower() == "bearer" and accepted

    async def _consumer(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response(
                {"error": "a bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            uuid = canonical_uuid(request.match_info["uuid"])
        except ValueError:
            return web.json_response({"error": "not a UUID"}, status=400)
        try:
            state = await get_consumer(request.app[_ENGINE], uuid)
        except Exception as exc:  # sorted: the store's transient errors, or a bug
            if not is_transient(exc):
                raise
            log.warning("read api: database unavailable", error=describe(exc))
            return web.json_response({"error": "the database cannot answer now"}, status=503)
        if state is None:
            return web.json_response({"error": "no such consumer"}, status=404)
        body = {"consumer_uuid": state.uuid, **state_document(state)}
        body["updated_at"] = None if state.updated_at is None else utc_timestamp(state.updated_at)
        return web.json_response(body)


def read_api_server(
    host: str,
    port: int,
    engine: Callable[[], AsyncEngine],
    tokens: ReadApiTokens | SecretStr | None,
) -> HttpServer:
    """The read API's server (not started)."""
    return HttpServer(host, port, ReadApi(engine, tokens).install, name="read-api-http")
