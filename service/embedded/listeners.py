"""Extra TLS listeners for the embedded broker: SSL (optionally with mutual TLS) and
SASL_SSL with SCRAM, each with its own certificate, so one broker can serve a good
certificate, an expired one and one for the wrong host name side by side.

Kafka 4.1 reads PEM files directly (``ssl.keystore.type=PEM``: the private key, PKCS#8,
followed by the certificate chain in one file; ``ssl.truststore.type=PEM``: the CA
certificates), so certificates made by any tool (the tests use ``cryptography``) are
used as they are: no JKS keystore, no ``keytool`` run.  Every setting is given per
listener (``listener.name.<name>.ssl.*``), which is why the listeners can differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCRAM_MECHANISMS = ("scram-sha-256", "scram-sha-512")


@dataclass(frozen=True)
class TlsListener:
    """One TLS listener.

    ``keystore``: a PEM file with the broker's unencrypted PKCS#8 key and its
    certificate chain.  ``truststore``: the PEM CA file client certificates are checked
    against (needed when ``client_auth`` is ``"required"``).  ``sasl``: SASL_SSL with
    the broker's SCRAM users instead of plain SSL.
    """

    keystore: Path
    truststore: Path | None = None
    client_auth: Literal["none", "requested", "required"] = "none"
    sasl: bool = False

    @property
    def protocol(self) -> str:
        return "SASL_SSL" if self.sasl else "SSL"


def tls_listener_properties(name: str, port: int, listener: TlsListener) -> dict[str, str]:
    """The ``server.properties`` lines of listener ``name`` (upper case, as Kafka wants)
    besides its entry in ``listeners``, ``advertised.listeners`` and the protocol map,
    which the broker joins for all its listeners."""
    prefix = f"listener.name.{name.lower()}."
    props = {
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(listener.keystore),
        f"{prefix}ssl.client.auth": listener.client_auth,
    }
    if listener.truststore is not None:
        props[f"{prefix}ssl.truststore.type"] = "PEM"
        props[f"{prefix}ssl.truststore.location"] = str(listener.truststore)
    if listener.sasl:
        for mechanism in SCRAM_MECHANISMS:
            props[f"{prefix}{mechanism}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
    return props


def validate_listener_name(name: str) -> None:
    """Names are joined into comma-separated broker settings: keep them plain."""
    reserved = {"PLAINTEXT", "CONTROLLER", "SASL_PLAINTEXT"}
    if not name.isidentifier() or name.upper() != name or name in reserved:
        raise ValueError(f"TLS listener name {name!r}: use an upper-case word not in {reserved}")
