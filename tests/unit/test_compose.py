"""compose.yaml cannot run here (no container engine); check it agrees with the code instead."""

from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import yaml

from service.config import Settings, load_settings
from service.daemon.listeners import check_exposure

COMPOSE = Path(__file__).parents[2] / "compose.yaml"
#: Compose's ``${VARIABLE:-default}``, standing for its default.
_INTERPOLATION = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_are_wired() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "postgres", "init", "daemon", "jaeger"}
    assert services["daemon"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "db upgrade" in " ".join(services["init"]["entrypoint"])
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"] == "postgres:15"


def test_every_variable_is_a_valid_setting() -> None:
    services = _compose()["services"]
    for name in ("init", "daemon"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert env, f"{name} has no CONSUMERGEN_* environment"
        for key in [k for k in env if k.startswith("OTEL_")]:
            assert key in _otel_variables(), key  # a name the OpenTelemetry SDK reads
            del env[key]  # checked by test_the_daemon_exports_traces_to_the_collector
        for key in env:
            assert key.startswith("CONSUMERGEN_"), key
            assert key.removeprefix("CONSUMERGEN_").lower() in Settings.model_fields, key
        # ${VAR:-default} interpolation is compose's; give it the default it would use.
        env = {k: _INTERPOLATION.sub(r"\1", v) for k, v in env.items()}
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
        with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
            settings = load_settings()
        assert settings.bootstrap_servers == "kafka:9092"
        assert settings.database_url.startswith("postgresql+asyncpg://")
        assert settings.outcomes_topic == "consumer-events.outcomes"
        assert settings.log_redaction_key is not None
        assert settings.log_redaction_key.get_secret_value() == "change-me"
        assert settings.reply_topic == "consumer-events.replies"
        # The read API listens on all interfaces, so it has a token (else no start).
        assert settings.read_api_host == "0.0.0.0" and settings.read_api_token is not None
        check_exposure(settings)


def test_daemon_port_matches_health_setting() -> None:
    daemon = _compose()["services"]["daemon"]
    port = int(daemon["environment"]["CONSUMERGEN_HEALTH_PORT"])
    read_api = int(daemon["environment"]["CONSUMERGEN_READ_API_PORT"])
    # Published on the host's loopback only: nothing else reaches them.
    assert daemon["ports"] == [f"127.0.0.1:{port}:{port}", f"127.0.0.1:{read_api}:{read_api}"]


def test_one_image_is_built_once_and_used_by_init_and_daemon() -> None:
    services = _compose()["services"]
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["init"]
    assert services["init"]["image"] == services["daemon"]["image"]
    assert services["daemon"]["pull_policy"] == "never"


def test_data_lives_in_named_volumes() -> None:
    compose = _compose()
    named = set(compose["volumes"])
    for name in ("kafka", "postgres"):
        [mount] = compose["services"][name]["volumes"]
        volume, _, target = mount.partition(":")
        assert volume in named, mount
        assert target.startswith("/var/lib/"), mount
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_LOG_DIRS"] == compose["services"]["kafka"]["volumes"][0].split(":")[1]


def test_the_broker_has_a_listener_the_host_reaches() -> None:
    kafka = _compose()["services"]["kafka"]
    env = kafka["environment"]
    advertised = dict(
        listener.split("://", 1) for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    host, _, port = advertised["HOST"].rpartition(":")
    assert host == "127.0.0.1"
    assert f"127.0.0.1:{port}:{port}" in kafka["ports"]
    assert f"HOST://:{port}" in env["KAFKA_LISTENERS"].split(",")
    assert "HOST:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    # The containers keep the internal listener (the daemon's CONSUMERGEN_BOOTSTRAP_SERVERS).
    assert advertised["PLAINTEXT"] == "kafka:9092"


def test_the_daemon_exports_traces_to_the_collector() -> None:
    """The daemon's OTEL_* variables make the SDK export over OTLP/HTTP to the jaeger
    service's OTLP port (the set-up the daemon runs, service.tracing.sdk)."""
    services = _compose()["services"]
    daemon, jaeger = services["daemon"], services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")
    assert "127.0.0.1:4318:4318" in jaeger["ports"]
    assert daemon["depends_on"]["jaeger"]["condition"] == "service_started"
    otel = {k: str(v) for k, v in daemon["environment"].items() if k.startswith("OTEL_")}
    assert otel["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert not any(k.startswith("OTEL_") for k in services["init"]["environment"])
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from service.tracing.sdk import exporter_classes, from_environment

    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with mock.patch.dict(os.environ, {**clean, **otel}, clear=True):
        assert exporter_classes() == [OTLPSpanExporter]
        tracing = from_environment(b"compose")
        assert tracing is not None
        try:
            assert tracing.provider.resource.attributes["service.name"] == "consumergen"
            assert "TraceIdRatioBased{1.0}" in tracing.provider.sampler.get_description()
        finally:
            tracing.shutdown()


def _otel_variables() -> set[str]:
    """Every OTEL_* variable the OpenTelemetry API and SDK name."""
    import opentelemetry.environment_variables
    import opentelemetry.sdk.environment_variables

    return {
        value
        for module in (opentelemetry.environment_variables, opentelemetry.sdk.environment_variables)
        for value in vars(module).values()
        if isinstance(value, str) and value.startswith("OTEL_")
    }
