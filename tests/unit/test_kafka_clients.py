"""service.kafka.clients without a broker: the settings -> aiokafka keywords every client
is built with (connection, security, what every reader and writer must do alike), and
``start_bounded``/``close_quietly`` over clients faked at ``start``/``stop``/``close``."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from service.config import ConfigError, Settings, load_settings
from service.kafka import clients
from service.kafka import records as kafka_records
from service.kafka.clients import (
    BrokerUnavailable,
    client_options,
    close_quietly,
    consumer_options,
    describe_servers,
    error_text,
    max_request_size,
    producer_options,
    ssl_context,
    start_bounded,
)
from tests.log_lines import logged
from tests.support.certs import CertificateSet, make_certificates

# --- the options -----------------------------------------------------------------------


def test_the_connection_options_of_a_plaintext_client() -> None:
    settings = load_settings(
        bootstrap_servers="kafka-1:9092, kafka-2:9093,,kafka-3:9094",
        client_id="replayer",
        request_timeout_seconds=2.5,
    )
    assert client_options(settings) == {
        "bootstrap_servers": ["kafka-1:9092", "kafka-2:9093", "kafka-3:9094"],
        "client_id": "replayer",
        "request_timeout_ms": 2500,
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_without_tls_sends_the_credentials_and_plain_by_default() -> None:
    settings = load_settings(
        security_protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password="pw-0815"
    )
    options = client_options(settings)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "PLAIN"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "pw-0815"
    assert "ssl_context" not in options


def test_sasl_over_tls_has_its_mechanism_and_a_verifying_context() -> None:
    settings = load_settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    options = client_options(settings)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] is None
    assert options["sasl_plain_password"] is None
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode is ssl.CERT_REQUIRED


def test_tls_alone_sends_no_sasl_keywords() -> None:
    options = client_options(load_settings(security_protocol="SSL"))
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert not [name for name in options if name.startswith("sasl")]


@pytest.mark.parametrize(
    ("max_event_bytes", "fetch_bytes"),
    [(1024, 1_048_576), (524_288, 1_048_576), (524_289, 1_048_578), (1_048_576, 2_097_152)],
)
def test_every_reader_reads_committed_records_by_hand_from_the_earliest(
    max_event_bytes: int, fetch_bytes: int
) -> None:
    """Twice the largest event per partition fetch, never less than Kafka's 1 MiB."""
    settings = load_settings(
        bootstrap_servers="k:1", max_event_bytes=max_event_bytes, fetch_max_wait_ms=250
    )
    options = consumer_options(settings)
    assert options == client_options(settings) | {
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": fetch_bytes,
        "fetch_max_wait_ms": 250,
    }
    assert kafka_records.installed()  # building a reader's options installs the parser


def test_a_readers_overrides_win() -> None:
    options = consumer_options(load_settings(), group_id=None, auto_offset_reset="latest")
    assert options["group_id"] is None and options["auto_offset_reset"] == "latest"


def test_a_reader_is_refused_before_any_record_when_a_codec_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(kafka_records.CODECS, "lz4", lambda: False)
    with pytest.raises(kafka_records.MissingCodec, match=r"compressed with lz4: the library"):
        consumer_options(load_settings())


@pytest.mark.parametrize(
    ("max_event_bytes", "request_size"),
    [(1024, 1_048_576), (983_040, 1_048_576), (983_041, 1_048_577), (1_048_576, 1_114_112)],
)
def test_every_writer_waits_for_all_replicas_idempotently(
    max_event_bytes: int, request_size: int
) -> None:
    settings = load_settings(
        bootstrap_servers="k:1", max_event_bytes=max_event_bytes, producer_linger_ms=7
    )
    assert max_request_size(settings) == request_size
    assert producer_options(settings) == client_options(settings) | {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 7,
        "max_request_size": request_size,
    }


def test_a_writers_overrides_win() -> None:
    options = producer_options(load_settings(), linger_ms=50, client_id="other")
    assert (options["linger_ms"], options["client_id"], options["acks"]) == (50, "other", "all")


def test_errors_name_the_bootstrap_list_only() -> None:
    settings = load_settings(
        bootstrap_servers="a:1,b:2", security_protocol="SASL_PLAINTEXT", sasl_password="s3cr3t"
    )
    assert describe_servers(settings) == "a:1,b:2"


def test_error_text_is_one_line_and_never_empty() -> None:
    assert error_text(KafkaConnectionError("Unable to bootstrap\n  from  nodes\t[a:1]")) == (
        "KafkaConnectionError: Unable to bootstrap from nodes [a:1]"
    )
    assert error_text(TimeoutError()) == "TimeoutError"
    assert error_text(OSError("  refused \n")) == "refused"


# --- starting and closing ----------------------------------------------------------------


class Client:
    """A producer/consumer (``stop``) whose ``start`` does what the test says."""

    def __init__(self, start: BaseException | None = None, *, hang: bool = False) -> None:
        self.start_error = start
        self.hang = hang
        self.started = 0
        self.stopped = 0

    async def start(self) -> None:
        self.started += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.start_error is not None:
            raise self.start_error

    async def stop(self) -> None:
        self.stopped += 1


def quick(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": "broker-a:19092,broker-b:19092",
        "request_timeout_seconds": 0.05,
    }
    return load_settings(**(values | overrides))


async def test_a_client_that_starts_is_left_running() -> None:
    client = Client()
    await start_bounded(client, quick(), "replay reader")
    assert (client.started, client.stopped) == (1, 0)


async def test_a_start_that_hangs_ends_at_the_request_timeout_closed_and_named() -> None:
    client = Client(hang=True)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BrokerUnavailable) as caught:
        await start_bounded(client, quick(), "replay reader")
    assert loop.time() - began < 5
    assert str(caught.value) == (
        "cannot connect the replay reader to Kafka at broker-a:19092,broker-b:19092: "
        "no answer within 0.05 s"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert client.stopped == 1


@pytest.mark.parametrize(
    "error",
    [KafkaConnectionError("Unable to bootstrap\nfrom [broker-a]"), ConnectionRefusedError("no")],
)
async def test_a_refused_start_says_what_failed_not_a_timeout(error: BaseException) -> None:
    client = Client(error)
    with pytest.raises(BrokerUnavailable) as caught:
        await start_bounded(client, quick(request_timeout_seconds=30), "admin client")
    assert str(caught.value) == (
        "cannot connect the admin client to Kafka at broker-a:19092,broker-b:19092: "
        + error_text(error)
    )
    assert "within" not in str(caught.value)
    assert client.stopped == 1


async def test_a_bug_at_start_is_not_an_outage() -> None:
    client = Client(ValueError("bad keyword"))
    with pytest.raises(ValueError, match="bad keyword"):
        await start_bounded(client, quick(), "republisher")
    assert client.stopped == 0


async def test_a_tls_start_failure_is_explained_by_the_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = quick(security_protocol="SSL")
    asked: list[tuple[Settings, dict[str, Any]]] = []

    async def diagnose(given: Settings, options: dict[str, Any]) -> str | None:
        asked.append((given, options))
        return "TLS: the certificate of the broker has expired"

    monkeypatch.setattr(clients.tls, "diagnose", diagnose)
    with pytest.raises(BrokerUnavailable) as caught:
        await start_bounded(Client(KafkaConnectionError("unable to bootstrap")), settings, "x")
    assert str(caught.value).endswith(
        "broker-b:19092: TLS: the certificate of the broker has expired"
    )
    [(given, options)] = asked
    assert given is settings
    assert options["bootstrap_servers"] == ["broker-a:19092", "broker-b:19092"]
    assert "ssl_context" in options


async def test_a_close_stops_a_client_with_stop_and_closes_an_admin_client() -> None:
    client = Client()
    await close_quietly(client)
    assert client.stopped == 1

    class Admin:
        closed = 0

        async def close(self) -> None:
            Admin.closed += 1

    await close_quietly(Admin())
    assert Admin.closed == 1


async def test_a_failing_close_is_logged_and_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    class Broken:
        async def stop(self) -> None:
            raise KafkaConnectionError("gone")

    await close_quietly(Broken())
    [entry] = [e for e in logged(caplog) if e["event"] == "kafka_client_close_failed"]
    assert entry["error"] == "KafkaConnectionError"


async def test_a_close_that_cancels_itself_is_not_the_callers_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aio-libs/aiokafka#647: the consumer's stop ends with CancelledError by itself."""
    caplog.set_level(logging.DEBUG)

    class SelfCancelling:
        async def stop(self) -> None:
            raise asyncio.CancelledError

    await close_quietly(SelfCancelling())  # returns: nobody cancelled the caller
    assert "kafka_client_close_cancelled_itself" in [e["event"] for e in logged(caplog)]


async def test_the_callers_cancellation_goes_through_a_close() -> None:
    entered = asyncio.Event()

    class Slow:
        async def stop(self) -> None:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(close_quietly(Slow()))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()


# --- the TLS files, named exactly -------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("setting", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_a_missing_tls_file_is_named_with_its_setting(
    certs: CertificateSet, tmp_path: Path, setting: str
) -> None:
    files: dict[str, Any] = {
        "ssl_cafile": certs.ca,
        "ssl_certfile": certs.client.cert,
        "ssl_keyfile": certs.client.key,
    }
    files[setting] = tmp_path / "gone.pem"
    with pytest.raises(ConfigError) as caught:
        ssl_context(load_settings(security_protocol="SSL", **files))
    assert (
        str(caught.value) == f"CONSUMERGEN_{setting.upper()}={tmp_path / 'gone.pem'}: no such file"
    )


def test_a_key_without_its_certificate_is_refused(certs: CertificateSet) -> None:
    with pytest.raises(ConfigError) as caught:
        ssl_context(load_settings(security_protocol="SSL", ssl_keyfile=certs.client.key))
    assert str(caught.value) == "CONSUMERGEN_SSL_KEYFILE is set without CONSUMERGEN_SSL_CERTFILE"


def test_a_ca_file_without_a_certificate_quotes_openssls_reason(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigError) as caught:
        ssl_context(load_settings(security_protocol="SSL", ssl_cafile=not_pem))
    assert re.fullmatch(
        rf"CONSUMERGEN_SSL_CAFILE={re.escape(str(not_pem))}: no CA certificate could be read "
        r"from it \([A-Z][A-Z0-9_]+\)",
        str(caught.value),
    ), str(caught.value)
    assert caught.value.__suppress_context__


def test_a_key_of_another_certificate_names_both_files_and_the_password(
    certs: CertificateSet,
) -> None:
    settings = load_settings(
        security_protocol="SSL",
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client.cert,
        ssl_keyfile=certs.broker.key,
    )
    with pytest.raises(ConfigError) as caught:
        ssl_context(settings)
    assert re.fullmatch(
        rf"CONSUMERGEN_SSL_CERTFILE={re.escape(str(certs.client.cert))}, "
        rf"CONSUMERGEN_SSL_KEYFILE={re.escape(str(certs.broker.key))}: the certificate and key "
        r"cannot be used \(OpenSSL: [A-Z][A-Z0-9_]+\); check that the key belongs to the "
        r"certificate and that CONSUMERGEN_SSL_KEYFILE_PASSWORD opens it",
        str(caught.value),
    ), str(caught.value)


def test_a_bundle_of_certificate_and_key_needs_no_key_file(certs: CertificateSet) -> None:
    settings = load_settings(
        security_protocol="SSL", ssl_cafile=certs.ca, ssl_certfile=certs.client.bundle
    )
    context = ssl_context(settings)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_openssls_reason_or_else_its_words_or_else_the_error_class() -> None:
    with_reason = ssl.SSLError(1, "[SSL] bad")
    with_reason.reason = "PEM_LIB"
    assert clients._ssl_reason(with_reason) == "PEM_LIB"
    assert clients._ssl_reason(ssl.SSLError(1, "words only")) == "words only"
    assert clients._ssl_reason(ssl.SSLError()) == "SSLError"
