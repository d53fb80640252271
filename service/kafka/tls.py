"""What went wrong in a TLS handshake with the broker, in words an operator can act on.

Python's ``ssl`` says ``CERTIFICATE_VERIFY_FAILED`` with an OpenSSL verify code; aiokafka
then only says "unable to bootstrap".  An operator needs to know which setting to look
at: a broker certificate that no CA in ``CONSUMERGEN_SSL_CAFILE`` signed, one that
expired, one that does not name the host in ``CONSUMERGEN_BOOTSTRAP_SERVERS``, or a client
certificate (``CONSUMERGEN_SSL_CERTFILE``) the broker refused.  The sentences name paths
and hosts, never key material or passwords.

Which class such a failure is (infrastructure, kind "broker") is decided in
``service.failures``; this module only explains.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError

from service.config import Settings

#: OpenSSL X509_V_ERR_* codes, by what they mean for the operator.
_UNTRUSTED: Final = frozenset({2, 18, 19, 20, 21})  # no trusted issuer / self-signed
_EXPIRED: Final = 10
_NOT_YET_VALID: Final = 9
_WRONG_HOST: Final = frozenset({62, 64})  # host name / IP address mismatch

#: Alerts the broker sends when it refuses the client's certificate (mutual TLS).
_CLIENT_CERT_ALERTS: Final = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_ACCESS_DENIED",
)

#: Every explanation starts with this, so a caller can tell it from other causes.
PREFIX: Final = "TLS: "


def is_certificate_failure(error: BaseException) -> bool:
    """True for a handshake that failed over a certificate, ours or the broker's."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return True
    if isinstance(error, ssl.SSLError):
        reason = str(getattr(error, "reason", "") or "")
        return any(alert in reason for alert in _CLIENT_CERT_ALERTS)
    return False


def _cafile(settings: Settings) -> str:
    return (
        f"CONSUMERGEN_SSL_CAFILE={settings.ssl_cafile}"
        if settings.ssl_cafile
        else "the system's default CAs (CONSUMERGEN_SSL_CAFILE is not set)"
    )


def explain(error: BaseException, settings: Settings, server: str) -> str | None:
    """One sentence for a certificate failure talking to ``server`` (host:port), or
    None when ``error`` is not one (:func:`is_certificate_failure`)."""
    if not is_certificate_failure(error):
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        code = getattr(error, "verify_code", None)
        if code in _UNTRUSTED:
            what = f"is not signed by a CA in {_cafile(settings)}"
        elif code == _EXPIRED:
            what = "has expired: renew it on the broker"
        elif code == _NOT_YET_VALID:
            what = "is not valid yet: check the clocks of the broker and this host"
        elif code in _WRONG_HOST:
            host = server.rpartition(":")[0]
            what = (
                f"does not name the host {host} (from CONSUMERGEN_BOOTSTRAP_SERVERS, "
                "and the broker's advertised listeners): connect by a name it was issued for"
            )
        else:
            detail = getattr(error, "verify_message", None) or error.strerror or "unknown"
            what = f"failed verification ({detail})"
        return f"{PREFIX}the certificate of the broker at {server} {what}"
    reason = str(getattr(error, "reason", "") or type(error).__name__)
    certificate = (
        f"CONSUMERGEN_SSL_CERTFILE={settings.ssl_certfile}"
        if settings.ssl_certfile
        else "none (CONSUMERGEN_SSL_CERTFILE is not set)"
    )
    return (
        f"{PREFIX}the broker at {server} refused this client's certificate, {certificate}: {reason}"
    )


def explain_unverified_close(settings: Settings, server: str) -> str | None:
    """A TLS 1.3 broker checks the client's certificate only after the handshake, and
    when it refuses it (or there is none but it requires one) it just closes the
    connection: the alert is lost.  For a TLS client whose connection was closed right
    after the handshake, that is the likely reason; None without TLS."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    if settings.ssl_certfile is None:
        return (
            f"{PREFIX}the broker at {server} closed the connection after the handshake; "
            "if it requires client certificates (mutual TLS), set CONSUMERGEN_SSL_CERTFILE "
            "and CONSUMERGEN_SSL_KEYFILE"
        )
    return (
        f"{PREFIX}the broker at {server} closed the connection after the handshake; it "
        f"most likely refuses this client's certificate, CONSUMERGEN_SSL_CERTFILE="
        f"{settings.ssl_certfile} (not signed by a CA the broker trusts, or expired)"
    )


async def diagnose(settings: Settings, options: dict[str, Any]) -> str | None:
    """Why a TLS client could not start, when it is a certificate: one direct
    connection to the first bootstrap server with the clients' ``options``
    (``service.kafka.clients.client_options``) gives the handshake's own error, which
    aiokafka's "unable to bootstrap" drops.  None for anything else (and for no TLS)."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    options = dict(options)
    servers: list[str] = options.pop("bootstrap_servers")
    server = servers[0]
    host, _, port = server.rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), **options), settings.request_timeout_seconds
        )
    except (KafkaError, OSError, TimeoutError, ValueError) as exc:
        return explain_connect_error(exc, settings, server)
    conn.close()
    return None


def explain_connect_error(error: BaseException, settings: Settings, server: str) -> str | None:
    """:func:`explain`, or for a TLS client whose connection the broker closed right
    after the handshake, :func:`explain_unverified_close`."""
    explained = explain(error, settings, server)
    if explained is None and isinstance(error, KafkaError) and "closed" in str(error):
        explained = explain_unverified_close(settings, server)
    return explained
