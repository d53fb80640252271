"""service.kafka.tls: each certificate failure is explained by the setting to look at,
naming paths and hosts only (the end-to-end cases are in tests/daemon/test_tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from service.config import load_settings
from service.kafka import tls

SERVER = "127.0.0.1:9093"


def _verify_failed(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    error.verify_message = "some OpenSSL words"
    return error


def _alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}]")
    error.reason = reason
    return error


SETTINGS = load_settings(
    bootstrap_servers=SERVER,
    security_protocol="SSL",
    ssl_cafile=Path("/etc/consumergen/ca.pem"),
    ssl_certfile=Path("/etc/consumergen/client.pem"),
    ssl_keyfile=Path("/etc/consumergen/client.key"),
    ssl_keyfile_password="key-pw-never-shown",
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _verify_failed(19),
            "is not signed by a CA in CONSUMERGEN_SSL_CAFILE=/etc/consumergen/ca.pem",
        ),
        (_verify_failed(20), "is not signed by a CA in CONSUMERGEN_SSL_CAFILE="),
        (_verify_failed(10), "has expired: renew it on the broker"),
        (_verify_failed(9), "is not valid yet"),
        (
            _verify_failed(64),
            "does not name the host 127.0.0.1 (from CONSUMERGEN_BOOTSTRAP_SERVERS",
        ),
        (_verify_failed(62), "does not name the host 127.0.0.1"),
        (_verify_failed(50), "failed verification (some OpenSSL words)"),
        (
            _alert("TLSV1_ALERT_UNKNOWN_CA"),
            "refused this client's certificate, CONSUMERGEN_SSL_CERTFILE=/etc/consumergen/"
            "client.pem: TLSV1_ALERT_UNKNOWN_CA",
        ),
    ],
)
def test_certificate_failures_name_the_setting(error: BaseException, expected: str) -> None:
    text = tls.explain(error, SETTINGS, SERVER)
    assert text is not None and text.startswith(tls.PREFIX + "the ")
    assert expected in text, text
    assert SERVER in text
    assert "key-pw-never-shown" not in text


def test_without_a_ca_file_the_system_cas_are_named() -> None:
    settings = load_settings(bootstrap_servers=SERVER, security_protocol="SSL")
    text = tls.explain(_verify_failed(20), settings, SERVER)
    assert (
        text is not None and "the system's default CAs (CONSUMERGEN_SSL_CAFILE is not set)" in text
    )


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError(), _alert("WRONG_VERSION_NUMBER"), ValueError("x")],
    ids=["refused", "not a certificate", "other"],
)
def test_other_failures_are_not_explained_as_certificates(error: BaseException) -> None:
    assert not tls.is_certificate_failure(error)
    assert tls.explain(error, SETTINGS, SERVER) is None


def test_a_close_after_the_handshake_hints_at_a_missing_client_certificate() -> None:
    without = load_settings(bootstrap_servers=SERVER, security_protocol="SSL")
    hint = tls.explain_unverified_close(without, SERVER)
    assert hint is not None and "set CONSUMERGEN_SSL_CERTFILE" in hint
    refused = tls.explain_unverified_close(SETTINGS, SERVER)
    assert refused is not None
    assert "refuses this client's certificate, CONSUMERGEN_SSL_CERTFILE=/etc/" in refused
    plain = load_settings(bootstrap_servers=SERVER)
    assert tls.explain_unverified_close(plain, SERVER) is None


def test_a_connection_error_is_explained_as_the_handshake_or_the_close() -> None:
    from aiokafka.errors import KafkaConnectionError

    without = load_settings(bootstrap_servers=SERVER, security_protocol="SSL")
    closed = KafkaConnectionError(f"Connection at {SERVER} closed")
    hint = tls.explain_connect_error(closed, without, SERVER)
    assert hint is not None and "mutual TLS" in hint
    expired = tls.explain_connect_error(_verify_failed(10), without, SERVER)
    assert expired is not None and "has expired" in expired
    assert tls.explain_connect_error(ConnectionRefusedError(), without, SERVER) is None
