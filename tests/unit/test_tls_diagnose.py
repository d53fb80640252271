"""service.kafka.tls.diagnose: one direct connection to the first bootstrap server gives
the handshake's own error, which aiokafka's "unable to bootstrap" drops (the connection
faked at aiokafka's ``create_conn``); and every explanation's exact sentence."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from service.config import Settings, load_settings
from service.kafka import tls
from service.kafka.clients import client_options
from tests.fake_conn import Call, fake_create_conn

SERVERS = "broker-1.example:9093,broker-2.example:9093"


def _connect(monkeypatch: pytest.MonkeyPatch, outcome: BaseException | str | None) -> list[Call]:
    return fake_create_conn(monkeypatch, tls, outcome)


def _settings(protocol: str = "SSL", **extra: Any) -> Settings:
    return load_settings(
        bootstrap_servers=SERVERS,
        security_protocol=protocol,
        request_timeout_seconds=0.1,
        **extra,
    )


def _verify_failed(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    error.verify_message = "certificate has expired"
    return error


async def test_without_tls_nothing_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _connect(monkeypatch, _verify_failed(10))
    for protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
        settings = _settings(protocol)
        assert await tls.diagnose(settings, client_options(settings)) is None
    assert calls == []


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
async def test_the_handshake_error_of_the_first_server_is_explained(
    monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    calls = _connect(monkeypatch, _verify_failed(10))
    settings = _settings(protocol)
    options = client_options(settings)
    text = await tls.diagnose(settings, options)
    assert text == (
        "TLS: the certificate of the broker at broker-1.example:9093 has expired: "
        "renew it on the broker"
    )
    [(host, port, given, _)] = calls
    assert (host, port) == ("broker-1.example", 9093)
    assert "bootstrap_servers" not in given
    assert given["ssl_context"] is options["ssl_context"]
    assert given["security_protocol"] == protocol
    assert options["bootstrap_servers"] == SERVERS.split(",")  # the caller's dict is intact


async def test_a_handshake_that_succeeds_explains_nothing_and_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _connect(monkeypatch, None)
    settings = _settings()
    assert await tls.diagnose(settings, client_options(settings)) is None
    assert calls[0][3].closed


async def test_a_close_after_the_handshake_is_the_unverified_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _connect(monkeypatch, KafkaConnectionError("Connection at broker-1.example:9093 closed"))
    settings = _settings()
    assert await tls.diagnose(settings, client_options(settings)) == (
        "TLS: the broker at broker-1.example:9093 closed the connection after the handshake; "
        "if it requires client certificates (mutual TLS), set CONSUMERGEN_SSL_CERTFILE and "
        "CONSUMERGEN_SSL_KEYFILE"
    )


@pytest.mark.parametrize(
    "outcome",
    ["hang", ConnectionRefusedError(111, "refused"), ValueError("bad"), KafkaConnectionError("x")],
    ids=["no answer", "refused", "value", "kafka error without a close"],
)
async def test_anything_but_a_certificate_is_left_to_the_callers_text(
    monkeypatch: pytest.MonkeyPatch, outcome: BaseException | str
) -> None:
    _connect(monkeypatch, outcome)
    settings = _settings()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await tls.diagnose(settings, client_options(settings)) is None
    assert loop.time() - began < 5


# --- the exact sentences ----------------------------------------------------------------

CA = Path("/etc/cg/ca.pem")
CERT = Path("/etc/cg/client.pem")
SERVER = "10.0.0.7:9093"


@pytest.mark.parametrize(
    ("code", "what"),
    [
        (2, "is not signed by a CA in CONSUMERGEN_SSL_CAFILE=/etc/cg/ca.pem"),
        (18, "is not signed by a CA in CONSUMERGEN_SSL_CAFILE=/etc/cg/ca.pem"),
        (21, "is not signed by a CA in CONSUMERGEN_SSL_CAFILE=/etc/cg/ca.pem"),
        (10, "has expired: renew it on the broker"),
        (9, "is not valid yet: check the clocks of the broker and this host"),
        (
            62,
            "does not name the host 10.0.0.7 (from CONSUMERGEN_BOOTSTRAP_SERVERS, and the "
            "broker's advertised listeners): connect by a name it was issued for",
        ),
        (11, "failed verification (certificate has expired)"),
    ],
)
def test_each_verify_code_in_one_sentence(code: int, what: str) -> None:
    settings = load_settings(security_protocol="SSL", ssl_cafile=CA)
    assert tls.explain(_verify_failed(code), settings, SERVER) == (
        f"TLS: the certificate of the broker at {SERVER} {what}"
    )


def test_a_verify_failure_without_words_says_what_openssl_said() -> None:
    bare = ssl.SSLCertVerificationError(1, "certificate verify failed")
    bare.verify_code = 50
    bare.verify_message = None
    settings = load_settings(security_protocol="SSL")
    assert tls.explain(bare, settings, SERVER) == (
        f"TLS: the certificate of the broker at {SERVER} failed verification "
        "(certificate verify failed)"
    )
    nothing = ssl.SSLCertVerificationError()
    nothing.verify_code = 50
    assert tls.explain(nothing, settings, SERVER) == (
        f"TLS: the certificate of the broker at {SERVER} failed verification (unknown)"
    )


@pytest.mark.parametrize(
    "reason",
    ["TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"],
)
def test_a_refused_client_certificate_names_it_or_its_absence(reason: str) -> None:
    error = ssl.SSLError(1, f"[SSL: {reason}]")
    error.reason = reason
    with_cert = load_settings(security_protocol="SSL", ssl_certfile=CERT, ssl_keyfile=CERT)
    assert tls.explain(error, with_cert, SERVER) == (
        f"TLS: the broker at {SERVER} refused this client's certificate, "
        f"CONSUMERGEN_SSL_CERTFILE=/etc/cg/client.pem: {reason}"
    )
    without = load_settings(security_protocol="SSL")
    assert tls.explain(error, without, SERVER) == (
        f"TLS: the broker at {SERVER} refused this client's certificate, "
        f"none (CONSUMERGEN_SSL_CERTFILE is not set): {reason}"
    )


def test_an_ssl_error_without_a_reason_is_no_certificate_failure() -> None:
    assert not tls.is_certificate_failure(ssl.SSLError(1, "whatever"))
    assert not tls.is_certificate_failure(OSError("ALERT_UNKNOWN_CA"))


def test_a_close_with_a_client_certificate_names_it() -> None:
    settings = load_settings(security_protocol="SASL_SSL", ssl_certfile=CERT, ssl_keyfile=CERT)
    assert tls.explain_unverified_close(settings, SERVER) == (
        f"TLS: the broker at {SERVER} closed the connection after the handshake; it most "
        "likely refuses this client's certificate, CONSUMERGEN_SSL_CERTFILE="
        "/etc/cg/client.pem (not signed by a CA the broker trusts, or expired)"
    )
    assert (
        tls.explain_unverified_close(load_settings(security_protocol="SASL_PLAINTEXT"), SERVER)
        is None
    )


def test_a_closed_connection_without_tls_or_closing_words_is_not_explained() -> None:
    plain = load_settings()
    closed = KafkaConnectionError("Connection at x closed")
    assert tls.explain_connect_error(closed, plain, SERVER) is None
    with_tls = load_settings(security_protocol="SSL")
    assert tls.explain_connect_error(KafkaConnectionError("reset"), with_tls, SERVER) is None
    assert tls.explain_connect_error(OSError("closed"), with_tls, SERVER) is None


def test_without_a_ca_file_the_sentence_names_the_system_cas() -> None:
    settings = load_settings(security_protocol="SSL")
    assert tls.explain(_verify_failed(19), settings, SERVER) == (
        f"TLS: the certificate of the broker at {SERVER} is not signed by a CA in the "
        "system's default CAs (CONSUMERGEN_SSL_CAFILE is not set)"
    )


async def test_an_ipv6_broker_is_asked_at_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _connect(monkeypatch, _verify_failed(10))
    settings = load_settings(
        bootstrap_servers="[::1]:9093", security_protocol="SSL", request_timeout_seconds=0.1
    )
    text = await tls.diagnose(settings, client_options(settings))
    assert (
        text
        == "TLS: the certificate of the broker at [::1]:9093 has expired: renew it on the broker"
    )
    assert calls[0][1] == 9093


def test_the_host_named_is_all_of_the_address_but_the_port() -> None:
    settings = load_settings(security_protocol="SSL")
    text = tls.explain(_verify_failed(62), settings, "[fd00::7]:9093")
    assert text is not None and "does not name the host [fd00::7] (from" in text


def test_a_verify_failure_without_a_code_is_explained_by_its_words() -> None:
    bare = ssl.SSLCertVerificationError(1, "certificate verify failed")
    settings = load_settings(security_protocol="SSL")
    assert tls.explain(bare, settings, SERVER) == (
        f"TLS: the certificate of the broker at {SERVER} failed verification "
        "(certificate verify failed)"
    )


def test_a_connection_error_is_explained_with_the_settings() -> None:
    settings = load_settings(security_protocol="SSL", ssl_cafile=CA)
    assert tls.explain_connect_error(_verify_failed(20), settings, SERVER) == (
        f"TLS: the certificate of the broker at {SERVER} is not signed by a CA in "
        "CONSUMERGEN_SSL_CAFILE=/etc/cg/ca.pem"
    )
