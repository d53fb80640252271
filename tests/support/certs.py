"""Certificates made at test time for the TLS tests: a CA, broker and client
certificates signed by it, and the three bad cases an operator meets (a broker
certificate from another CA, an expired one, one for another host name).

Made with ``cryptography`` (a dev dependency) as PEM files: Kafka reads PEM key and
trust stores directly (``ssl.keystore.type=PEM``), Python's ``ssl`` does too, so no
JKS and no ``keytool`` run is needed.  Keys are EC P-256: fast to make, so a test
module makes its own set in milliseconds instead of shipping secrets in the repository.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What a good broker certificate names: the embedded broker's listeners are on 127.0.0.1.
BROKER_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Identity:
    """One certificate and its key, as PEM files; ``bundle`` is key + chain in one file
    (what Kafka's PEM keystore wants)."""

    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True)
class CertificateSet:
    """Everything the TLS tests need, under one folder."""

    ca: Path  #: the CA certificate clients and the broker trust
    other_ca: Path  #: a CA that signed nothing the broker presents ("wrong CA")
    broker: Identity  #: valid, for 127.0.0.1 and localhost
    broker_expired: Identity  #: same CA and names, but expired yesterday
    broker_wrong_host: Identity  #: same CA, valid, but only for broker.invalid
    client: Identity  #: a client certificate for mutual TLS
    client_key_password: str  #: ``client_encrypted``'s key password
    client_encrypted: Identity  #: the client certificate with a password-protected key
    client_other_ca: Identity  #: a client certificate the broker's CA did not sign


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    *,
    hosts: tuple[str, ...] = (),
    client: bool = False,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    begins, ends = (
        (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begins)
        .not_valid_after(ends)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(
    folder: Path,
    stem: str,
    issued: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    ca_cert: x509.Certificate,
    password: str | None = None,
) -> Identity:
    cert, key = issued
    paths = Identity(folder / f"{stem}.crt", folder / f"{stem}.key", folder / f"{stem}.pem")
    paths.cert.write_bytes(_pem_cert(cert))
    paths.key.write_bytes(_pem_key(key, password))
    paths.key.chmod(0o600)
    paths.bundle.write_bytes(_pem_key(key, password) + _pem_cert(cert) + _pem_cert(ca_cert))
    paths.bundle.chmod(0o600)
    return paths


def make_certificates(folder: Path) -> CertificateSet:
    """Write a fresh :class:`CertificateSet` under ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca("consumergen test CA")
    other = _make_ca("consumergen other CA")
    (folder / "ca.crt").write_bytes(_pem_cert(ca[0]))
    (folder / "other-ca.crt").write_bytes(_pem_cert(other[0]))
    password = "client-Key-pw-2718"
    return CertificateSet(
        ca=folder / "ca.crt",
        other_ca=folder / "other-ca.crt",
        broker=_write(folder, "broker", _issue(ca, "broker", hosts=BROKER_HOSTS), ca[0]),
        broker_expired=_write(
            folder,
            "broker-expired",
            _issue(ca, "broker-expired", hosts=BROKER_HOSTS, expired=True),
            ca[0],
        ),
        broker_wrong_host=_write(
            folder,
            "broker-wrong-host",
            _issue(ca, "broker.invalid", hosts=("broker.invalid",)),
            ca[0],
        ),
        client=_write(folder, "client", _issue(ca, "consumergen-client", client=True), ca[0]),
        client_key_password=password,
        client_encrypted=_write(
            folder,
            "client-encrypted",
            _issue(ca, "consumergen-client-2", client=True),
            ca[0],
            password,
        ),
        client_other_ca=_write(
            folder, "client-other-ca", _issue(other, "stranger", client=True), other[0]
        ),
    )
