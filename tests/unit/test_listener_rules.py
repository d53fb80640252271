"""Which listeners may be exposed, and a failure to listen said as one line naming the
setting and the address: pure rules and real sockets, no daemon."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from service.config import ConfigError, load_settings
from service.daemon.health import HealthServer, Readiness
from service.daemon.listeners import (
    Listener,
    ListenerError,
    check_exposure,
    has_read_api_token,
    health_listener,
    is_loopback,
    listen_error,
    listeners,
    probe,
    start,
)
from service.daemon.metrics import DaemonMetrics


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.0.0.5", False),
        ("consumergen.example.org", False),
    ],
)
def test_loopback_is_only_what_no_other_machine_reaches(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({}, False),
        ({"read_api_host": "0.0.0.0"}, True),
        ({"read_api_host": "0.0.0.0", "read_api_token": "t"}, False),
        ({"read_api_host": "0.0.0.0", "read_api_token": " "}, True),  # empty is none
        ({"read_api_host": "0.0.0.0", "read_api_tokens": ", ,"}, True),
        ({"read_api_host": "0.0.0.0", "read_api_tokens": "a,b"}, False),
        ({"read_api_host": "0.0.0.0", "read_api_tokens_file": "tokens"}, False),
        ({"read_api_host": "0.0.0.0", "read_api_allow_anonymous": True}, False),
        ({"read_api_host": "10.1.2.3"}, True),
        ({"read_api_host": "0.0.0.0", "read_api_port": None}, False),  # no read API at all
        ({"health_host": "0.0.0.0"}, False),  # probes and metrics are open by design
    ],
)
def test_a_read_api_other_machines_reach_needs_a_token(
    settings: dict[str, object], refused: bool, tmp_path: Path
) -> None:
    if "read_api_tokens_file" in settings:
        settings = {**settings, "read_api_tokens_file": tmp_path / "tokens"}
    # load_settings drops None overrides (an option not given): no read API is a copy.
    loaded = load_settings(**settings).model_copy(
        update={k: v for k, v in settings.items() if v is None}
    )
    if not refused:
        check_exposure(loaded)
        return
    with pytest.raises(ConfigError) as caught:
        check_exposure(loaded)
    message = str(caught.value)
    assert message.startswith("CONSUMERGEN_READ_API_HOST: ") and "\n" not in message
    assert "CONSUMERGEN_READ_API_ALLOW_ANONYMOUS=true" in message


LISTENER = Listener("CONSUMERGEN_X_HOST", "CONSUMERGEN_X_PORT", "127.0.0.1", 8001)


@pytest.mark.parametrize(
    ("error", "named", "says"),
    [
        (OSError(errno.EADDRINUSE, "in use"), "CONSUMERGEN_X_PORT", "already in use"),
        (OSError(errno.EACCES, "denied"), "CONSUMERGEN_X_PORT", "permission denied"),
        (OSError(errno.EADDRNOTAVAIL, "x"), "CONSUMERGEN_X_HOST", "not an address of this"),
        (socket.gaierror(-2, "Name or service not known"), "CONSUMERGEN_X_HOST", "no such host"),
        (OSError(errno.EINVAL, "Invalid argument"), "CONSUMERGEN_X_PORT", "Invalid argument"),
    ],
)
def test_each_listen_failure_names_its_setting_and_the_address(
    error: OSError, named: str, says: str
) -> None:
    message = str(listen_error(LISTENER, error))
    assert message.startswith(f"{named}: cannot listen on 127.0.0.1:8001: "), message
    assert says in message and "\n" not in message


def test_a_listen_failure_without_an_os_reason_says_the_error_itself() -> None:
    message = str(listen_error(LISTENER, OSError("odd failure")))
    assert message == "CONSUMERGEN_X_PORT: cannot listen on 127.0.0.1:8001: odd failure"


@pytest.mark.parametrize(
    ("token", "tokens", "has"),
    [(" ", " ", False), (" ", " , ", False), (None, " ,b", True), ("a", None, True)],
)
def test_blank_tokens_are_no_tokens_whichever_settings_carry_them(
    token: str | None, tokens: str | None, has: bool
) -> None:
    given = {k: v for k, v in {"read_api_token": token, "read_api_tokens": tokens}.items() if v}
    assert has_read_api_token(load_settings(**given)) is has


def test_an_ipv6_address_is_bracketed() -> None:
    assert Listener("H", "P", "::1", 80).address == "[::1]:80"


def test_probe_finds_a_taken_port_and_passes_free_ones() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = load_settings(health_port=0, read_api_port=port)
        with pytest.raises(ListenerError, match=f"CONSUMERGEN_READ_API_PORT: .*:{port}: "):
            probe(settings)
    probe(settings)  # released: free again
    probe(load_settings(health_port=0, read_api_port=0))  # "any port" is never probed
    no_read_api = load_settings().model_copy(update={"read_api_port": None})
    assert [x.port_setting for x in listeners(no_read_api)] == ["CONSUMERGEN_HEALTH_PORT"]


def test_probe_names_a_host_that_does_not_resolve() -> None:
    settings = load_settings(health_host="no-such-host.invalid", health_port=8000)
    with pytest.raises(ListenerError, match=r"^CONSUMERGEN_HEALTH_HOST: .*no such host"):
        probe(settings)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("[::1]", True),  # as written in a URL
        (" 127.0.0.1 ", True),
        ("X127.0.0.1", False),  # a name around an address is a name: it may resolve anywhere
        ("[::]", False),
    ],
)
def test_loopback_takes_a_bracketed_address_and_nothing_around_one(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


def test_the_exposure_refusal_names_every_setting_that_would_allow_it() -> None:
    with pytest.raises(ConfigError) as caught:
        check_exposure(load_settings(read_api_host="0.0.0.0"))
    assert str(caught.value) == (
        "CONSUMERGEN_READ_API_HOST: 0.0.0.0 is reachable from other machines and no "
        "CONSUMERGEN_READ_API_TOKEN, CONSUMERGEN_READ_API_TOKENS or "
        "CONSUMERGEN_READ_API_TOKENS_FILE is set; set a token, bind 127.0.0.1, or set "
        "CONSUMERGEN_READ_API_ALLOW_ANONYMOUS=true"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_probe_names_the_health_port_when_it_is_taken() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = load_settings(health_port=port, read_api_port=0)
        with pytest.raises(ListenerError) as caught:
            probe(settings)
    assert str(caught.value) == (
        f"CONSUMERGEN_HEALTH_PORT: cannot listen on 127.0.0.1:{port}: the address is already in use"
    )


def test_probe_names_the_read_api_host_that_is_not_an_address_of_this_machine() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    port = _free_port()
    settings = load_settings(health_port=0, read_api_host="192.0.2.1", read_api_port=port)
    with pytest.raises(ListenerError) as caught:
        probe(settings)
    assert str(caught.value) == (
        f"CONSUMERGEN_READ_API_HOST: cannot listen on 192.0.2.1:{port}: "
        "not an address of this machine"
    )


def test_probe_never_tries_any_port_whatever_the_host() -> None:
    """Port 0 is "any free port": the daemon's own bind is the only check, so not even
    an address this machine lacks is probed."""
    probe(load_settings(health_host="192.0.2.1", health_port=0, read_api_port=0))


def test_probe_of_the_empty_host_finds_a_port_taken_on_any_one_address() -> None:
    """An empty host listens on every address of the machine (aiohttp binds the
    wildcard), so a port held on one address (127.0.0.2, also loopback) is a clash."""
    with socket.socket() as held:
        held.bind(("127.0.0.2", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = load_settings(health_host="", health_port=port, read_api_port=0)
        with pytest.raises(ListenerError, match=f"^CONSUMERGEN_HEALTH_PORT: .*:{port}: the"):
            probe(settings)


def test_a_server_that_cannot_listen_is_one_line_naming_the_setting() -> None:
    """``start``: what the daemon's health server (a real one) raises when its port is
    taken becomes the listener's one-line error."""
    readiness, metrics = Readiness(), DaemonMetrics()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        listener = health_listener(load_settings(health_port=port))
        server = HealthServer(listener.host, listener.port, readiness, metrics)
        with pytest.raises(ListenerError) as caught:
            start(server, listener)
    assert str(caught.value) == (
        f"CONSUMERGEN_HEALTH_PORT: cannot listen on 127.0.0.1:{port}: the address is already in use"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
