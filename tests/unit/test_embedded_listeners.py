"""service.embedded.listeners: what each TLS listener adds to server.properties (the
broker itself is exercised in tests/daemon/test_tls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.embedded.kafka import KafkaBroker
from service.embedded.listeners import TlsListener, tls_listener_properties, validate_listener_name


def test_a_mutual_tls_listener_reads_pem_stores_and_requires_client_certificates() -> None:
    props = tls_listener_properties(
        "MTLS", 9093, TlsListener(Path("/k.pem"), Path("/ca.pem"), client_auth="required")
    )
    assert props == {
        "listener.name.mtls.ssl.keystore.type": "PEM",
        "listener.name.mtls.ssl.keystore.location": "/k.pem",
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.mtls.ssl.truststore.type": "PEM",
        "listener.name.mtls.ssl.truststore.location": "/ca.pem",
    }


def test_a_sasl_ssl_listener_takes_scram_logins() -> None:
    props = tls_listener_properties("SASLTLS", 9094, TlsListener(Path("/k.pem"), sasl=True))
    assert props["listener.name.sasltls.scram-sha-512.sasl.jaas.config"].startswith(
        "org.apache.kafka.common.security.scram.ScramLoginModule"
    )
    assert TlsListener(Path("/k.pem"), sasl=True).protocol == "SASL_SSL"


def test_the_broker_lists_each_tls_listener_with_its_protocol(tmp_path: Path) -> None:
    broker = KafkaBroker(
        tmp_path,
        port=1,
        controller_port=2,
        scram_users={"u": "p"},
        sasl_port=3,
        tls_listeners={
            "TLS": TlsListener(Path("/a.pem")),
            "S": TlsListener(Path("/b.pem"), sasl=True),
        },
        tls_ports={"TLS": 4, "S": 5},
    )
    props = broker._properties()
    assert props["listeners"].endswith(",TLS://127.0.0.1:4,S://127.0.0.1:5")
    assert props["advertised.listeners"].endswith(",TLS://127.0.0.1:4,S://127.0.0.1:5")
    assert props["listener.security.protocol.map"].endswith(",TLS:SSL,S:SASL_SSL")
    assert broker.tls_bootstrap_servers("S") == "127.0.0.1:5"


@pytest.mark.parametrize("name", ["tls", "PLAINTEXT", "A,B", ""])
def test_listener_names_are_plain_upper_case_words(name: str) -> None:
    with pytest.raises(ValueError, match="TLS listener name"):
        validate_listener_name(name)


def test_a_sasl_ssl_listener_without_scram_users_is_refused_before_the_jvm(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path, tls_listeners={"S": TlsListener(Path("/b.pem"), sasl=True)})
    with pytest.raises(ValueError, match="give the broker scram_users"):
        broker.start()
    assert broker.process is None
