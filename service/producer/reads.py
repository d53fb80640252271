"""The producer's client of the daemon's read API (``GET /v1/consumers/{uuid}``).

A producer reads a consumer's state (its generation above all) over HTTP, without
database credentials, to build a conditional event from it (``EventProducer.update``).
The base URL is ``CONSUMERGEN_READ_API_URL`` (by default the daemon's read API host
and port); the bearer token, when the daemon requires one, is ``CONSUMERGEN_READ_API_TOKEN``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from service.config import ConfigError, Settings
from service.contract.state import state_from_document
from service.domain.consumer import ConsumerState
from service.domain.errors import InfrastructureUnavailable, InvalidInput


class ReadUnavailable(InfrastructureUnavailable):
    """The read API cannot answer now (unreachable, timed out, 5xx); retry later."""


class ReadRefused(InvalidInput):
    """The read API refused the request itself (not a UUID: 400, bad token: 401)."""


def read_api_url(settings: Settings) -> str:
    """Where the read API is: the setting, or the daemon's read API host and port."""
    if settings.read_api_url is not None:
        return settings.read_api_url.rstrip("/")
    if settings.read_api_port is None:
        raise ConfigError("CONSUMERGEN_READ_API_URL: not set, and the read API is disabled")
    return f"http://{settings.read_api_host}:{settings.read_api_port}"


class ConsumerReader:
    """``async with ConsumerReader(settings) as reader: state = await reader.get(uuid)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str | None = None,
        token: SecretStr | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self.base_url = (base_url or read_api_url(settings)).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"CONSUMERGEN_READ_API_URL: not an http(s) URL: {self.base_url}")
        secret = token or settings.read_api_token
        self._headers = (
            {} if secret is None else {"Authorization": f"Bearer {secret.get_secret_value()}"}
        )
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_seconds or settings.request_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get(self, consumer_uuid: str) -> ConsumerState | None:
        """The consumer's state (a tombstone has ``deleted``), or None if it never existed.

        ``ReadUnavailable`` when the API cannot answer now; ``ReadRefused`` for a request
        it will never accept (a malformed UUID, a missing or wrong token)."""
        if self._session is None:
            raise RuntimeError("ConsumerReader is not started (use 'async with')")
        url = f"{self.base_url}/v1/consumers/{quote(consumer_uuid, safe='')}"
        try:
            async with self._session.get(url) as response:
                if response.status == 404:
                    return None
                if response.status in (400, 401, 403):
                    detail = (await response.json(content_type=None)).get("error", "")
                    raise ReadRefused(
                        f"the read API refused the request ({response.status}: {detail})"
                    )
                if response.status != 200:
                    raise ReadUnavailable(
                        f"the read API at {self.base_url} answered {response.status}"
                    )
                doc = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReadUnavailable(
                f"the read API at {self.base_url} did not answer "
                f"({type(exc).__name__}: {' '.join(str(exc).split()) or 'no detail'})"
            ) from None
        return state_from_document(str(doc["consumer_uuid"]), doc)
