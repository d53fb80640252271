"""The daemon's listening sockets (health and read API): what may be exposed, and a
failure to listen said as one line naming the setting and the address.

DESIGN.md: "A setting that cannot work (a taken port, a public read API without a
token) is one line naming it, exit 2, before anything starts."  So the daemon binds
every listener in one step after its configuration, durability and schema checks and
before it touches the broker (``service.daemon.app``), and ``consumergen run --local``
tries the addresses before it starts its broker (``probe``).  A taken port, a port
that needs privileges, an address this machine does not have or a host name that does
not resolve becomes a ``ListenerError`` (a ``ConfigurationError``), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from service.config import ConfigError, Settings, env_name
from service.daemon.http_server import HttpServer
from service.domain.errors import ConfigurationError


class ListenerError(ConfigurationError):
    """A listener that cannot listen; the message names the setting and the address."""


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket and the settings that place it."""

    host_setting: str
    port_setting: str
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def health_listener(settings: Settings) -> Listener:
    return Listener(
        env_name("health_host"), env_name("health_port"), settings.health_host, settings.health_port
    )


def read_api_listener(settings: Settings) -> Listener | None:
    if settings.read_api_port is None:
        return None
    return Listener(
        env_name("read_api_host"),
        env_name("read_api_port"),
        settings.read_api_host,
        settings.read_api_port,
    )


def listeners(settings: Settings) -> list[Listener]:
    """Every socket the daemon listens on, in the order it binds them."""
    read_api = read_api_listener(settings)
    return [health_listener(settings), *([read_api] if read_api is not None else [])]


def is_loopback(host: str) -> bool:
    """True only for an address that no other machine can reach (a name other than
    ``localhost`` counts as reachable: it may resolve to anything)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def has_read_api_token(settings: Settings) -> bool:
    """Whether any read-API token is configured (an empty value is none: it must not
    open an exposed read API)."""
    fixed = [settings.read_api_token, settings.read_api_tokens]
    listed = ",".join(secret.get_secret_value() for secret in fixed if secret is not None)
    return any(token.strip() for token in listed.split(",")) or (
        settings.read_api_tokens_file is not None
    )


def check_exposure(settings: Settings) -> None:
    """Refuse a read API that other machines reach without a token, unless
    ``CONSUMERGEN_READ_API_ALLOW_ANONYMOUS`` says so (consumer states are no secret
    to every deployment, but that is the operator's call, made explicitly)."""
    if settings.read_api_port is None or is_loopback(settings.read_api_host):
        return
    if has_read_api_token(settings) or settings.read_api_allow_anonymous:
        return
    raise ConfigError(
        f"{env_name('read_api_host')}: {settings.read_api_host} is reachable from other "
        f"machines and no {env_name('read_api_token')}, {env_name('read_api_tokens')} or "
        f"{env_name('read_api_tokens_file')} is set; set a token, bind 127.0.0.1, or set "
        f"{env_name('read_api_allow_anonymous')}=true"
    )


def listen_error(listener: Listener, exc: OSError) -> ListenerError:
    """What ``exc`` (from binding ``listener``) means, as one line naming the setting."""
    where = f"cannot listen on {listener.address}"
    if isinstance(exc, socket.gaierror):
        return ListenerError(f"{listener.host_setting}: {where}: no such host ({exc.strerror})")
    if exc.errno == errno.EADDRINUSE:
        return ListenerError(f"{listener.port_setting}: {where}: the address is already in use")
    if exc.errno == errno.EACCES:
        return ListenerError(f"{listener.port_setting}: {where}: permission denied")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenerError(f"{listener.host_setting}: {where}: not an address of this machine")
    reason = exc.strerror or str(exc)
    return ListenerError(f"{listener.port_setting}: {where}: {reason}")


def start(server: HttpServer, listener: Listener) -> None:
    """Start ``server`` on ``listener``'s address, or raise ``ListenerError``."""
    try:
        server.start()
    except OSError as exc:
        raise listen_error(listener, exc) from None


def probe(settings: Settings, extra: Iterable[Listener] = ()) -> None:
    """Try every fixed address now (bind, then close at once), so that a clash is found
    before something slow starts (``run --local``'s broker, whose own port is ``extra``).
    The daemon's own bind is what counts: another process may still take a port in
    between."""
    for listener in (*extra, *listeners(settings)):
        if listener.port == 0:
            continue
        try:
            infos = socket.getaddrinfo(
                listener.host or None,
                listener.port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except OSError as exc:
            raise listen_error(listener, exc) from None
        family, kind, proto, _, address = infos[0]
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            # As the server binds (aiohttp: reuse_address), so TIME_WAIT is no clash.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise listen_error(listener, exc) from None
