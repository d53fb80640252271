"""Bad configuration fails at start-up with a message naming the setting."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from service.config import ConfigError, Settings, env_name, load_settings
from service.producer.reads import read_api_url


@pytest.fixture
def clean_env() -> Iterator[None]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    with mock.patch.dict(os.environ, kept, clear=True):
        yield


def test_defaults_are_a_local_run(clean_env: None) -> None:
    settings = load_settings()
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.topic == "consumer-events"
    assert settings.dlq_topic == "consumer-events.dlq"
    assert settings.is_sqlite


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CONSUMERGEN_TOPIC_PARTITIONS", "zero", "CONSUMERGEN_TOPIC_PARTITIONS"),
        ("CONSUMERGEN_TOPIC_PARTITIONS", "0", "CONSUMERGEN_TOPIC_PARTITIONS"),
        ("CONSUMERGEN_DATABASE_URL", "mysql://x", "CONSUMERGEN_DATABASE_URL"),
        ("CONSUMERGEN_LOG_LEVEL", "LOUD", "CONSUMERGEN_LOG_LEVEL"),
        ("CONSUMERGEN_SECURITY_PROTOCOL", "TLS", "CONSUMERGEN_SECURITY_PROTOCOL"),
        ("CONSUMERGEN_BOOTSTRAP_SERVER", "x:1", "CONSUMERGEN_BOOTSTRAP_SERVER"),
    ],
)
def test_bad_value_names_the_variable(
    clean_env: None, variable: str, value: str, named: str
) -> None:
    os.environ[variable] = value
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_file_then_environment_then_overrides(clean_env: None, tmp_path: Path) -> None:
    config = tmp_path / "consumergen.env"
    config.write_text("CONSUMERGEN_TOPIC=from-file\nCONSUMERGEN_GROUP_ID=file-group\n")
    os.environ["CONSUMERGEN_GROUP_ID"] = "env-group"
    settings = load_settings(config, topic=None, client_id="cli")
    assert (settings.topic, settings.group_id, settings.client_id) == (
        "from-file",
        "env-group",
        "cli",
    )


def test_missing_config_file_is_named(clean_env: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CONSUMERGEN_CONFIG_FILE"):
        load_settings(tmp_path / "nope.env")


def test_unknown_key_in_file_is_named(clean_env: None, tmp_path: Path) -> None:
    config = tmp_path / "consumergen.env"
    config.write_text("CONSUMERGEN_TOPICS=x\n")
    with pytest.raises(ConfigError, match="CONSUMERGEN_TOPICS"):
        load_settings(config)


def test_secrets_do_not_show_in_repr(clean_env: None) -> None:
    os.environ["CONSUMERGEN_SASL_PASSWORD"] = "hunter2"
    os.environ["CONSUMERGEN_LOG_REDACTION_KEY"] = "k3y"
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "k3y" not in repr(settings)


TINY = math.nextafter(0.0, 1.0)
#: Kafka's signed 32-bit fields (written out: the test does not trust the code's own).
INT32_MAX = 2_147_483_647
#: Every numeric setting's edges: (lowest accepted, highest refused below it, highest
#: accepted, lowest refused above it); None where there is no upper bound.
BOUNDS: dict[str, tuple[float, float, float | None, float | None]] = {
    "outcome_wait_seconds": (TINY, 0, None, None),
    "topic_partitions": (1, 0, INT32_MAX, INT32_MAX + 1),
    "topic_replication_factor": (1, 0, 32_767, 32_768),
    "max_event_bytes": (1024, 1023, 1_073_741_823, 1_073_741_824),
    "request_timeout_seconds": (TINY, 0, 2_147_483, math.nextafter(2_147_483.0, math.inf)),
    "database_pool_size": (1, 0, None, None),
    "sqlite_busy_timeout_ms": (0, -1, None, None),
    "cas_retry_attempts": (1, 0, None, None),
    "cas_retry_timeout_seconds": (TINY, 0, None, None),
    "cas_retry_wait_initial_seconds": (0, -TINY, None, None),
    "cas_retry_wait_max_seconds": (TINY, 0, None, None),
    "batch_max_events": (1, 0, None, None),
    "timeline_every": (1, 0, None, None),
    "shutdown_grace_seconds": (0, -TINY, None, None),
    "infra_retry_wait_initial_seconds": (TINY, 0, None, None),
    "infra_retry_wait_max_seconds": (TINY, 0, None, None),
    "probe_interval_seconds": (TINY, 0, None, None),
    "session_timeout_ms": (1, 0, INT32_MAX, INT32_MAX + 1),
    "heartbeat_interval_ms": (1, 0, INT32_MAX, INT32_MAX + 1),
    "max_poll_interval_ms": (1, 0, INT32_MAX, INT32_MAX + 1),
    "liveness_stale_seconds": (TINY, 0, None, None),
    # below the poll-interval limit (CONSUMERGEN_MAX_POLL_INTERVAL_MS, 300 s by default)
    "stall_seconds": (TINY, 0, math.nextafter(300.0, 0.0), 300.0),
    "fetch_max_wait_ms": (0, -1, 60_000, 60_001),
    "producer_linger_ms": (0, -1, 60_000, 60_001),
    "health_port": (0, -1, 65_535, 65_536),
    "read_api_port": (0, -1, 65_535, 65_536),
}


def test_every_numeric_setting_has_its_edges_tested() -> None:
    numeric = {
        name
        for name, info in Settings.model_fields.items()
        if info.annotation in (int, float, int | None, float | None)
    }
    assert numeric == set(BOUNDS)


def _load(name: str, value: float) -> Settings:
    with mock.patch.dict(os.environ, {env_name(name): repr(value)}):
        return load_settings()


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_each_numeric_setting_accepts_its_edges_and_refuses_beyond_naming_itself(
    clean_env: None, name: str
) -> None:
    lowest, below, highest, above = BOUNDS[name]
    edges = [(lowest, True), (below, False)]
    if highest is not None and above is not None:
        edges += [(highest, True), (above, False)]
    for value, accepted in edges:
        if accepted:
            assert getattr(_load(name, value), name) == value
            continue
        with pytest.raises(ConfigError) as refused:
            _load(name, value)
        message = str(refused.value)
        assert message.startswith(f"invalid configuration: {env_name(name)}: "), message
        assert "\n" not in message


def test_the_config_file_variable_names_the_file_and_is_no_setting(
    clean_env: None, tmp_path: Path
) -> None:
    """``CONSUMERGEN_CONFIG_FILE`` is where the file is, not an unknown setting;
    ``CONSUMERGEN_TEST_*`` belong to the test suite."""
    config = tmp_path / "consumergen.env"
    config.write_text("CONSUMERGEN_TOPIC=from-file\n")
    with mock.patch.dict(
        os.environ, {"CONSUMERGEN_CONFIG_FILE": str(config), "CONSUMERGEN_TEST_X": "1"}
    ):
        assert load_settings().topic == "from-file"


def test_every_bad_value_is_named_in_one_line(clean_env: None) -> None:
    os.environ["CONSUMERGEN_HEALTH_PORT"] = "65536"
    os.environ["CONSUMERGEN_BATCH_MAX_EVENTS"] = "0"
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration: CONSUMERGEN_")
    problems = message.removeprefix("invalid configuration: ").split("; ")
    assert sorted(p.split(":")[0] for p in problems) == [
        "CONSUMERGEN_BATCH_MAX_EVENTS",
        "CONSUMERGEN_HEALTH_PORT",
    ]


def test_the_reply_topic_defaults_to_the_events_topic_dot_replies(clean_env: None) -> None:
    """One default name that the daemon and every producer derive alike (issue 24)."""
    assert load_settings().reply_topic == "consumer-events.replies"
    os.environ["CONSUMERGEN_TOPIC"] = "orders"
    assert load_settings().reply_topic == "orders.replies"
    os.environ["CONSUMERGEN_REPLY_TOPIC"] = ""  # empty is the default, not "no topic"
    assert load_settings().reply_topic == "orders.replies"
    os.environ["CONSUMERGEN_REPLY_TOPIC"] = "mine"
    os.environ["CONSUMERGEN_ALLOWED_REPLY_TOPICS"] = "team-a.replies, team-b.replies,"
    settings = load_settings()
    assert settings.reply_topic == "mine"
    assert settings.reply_topics_allowed == {"mine", "team-a.replies", "team-b.replies"}


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_read_api_port_disables_the_read_api(clean_env: None, empty: str) -> None:
    """The setting says "empty disables it": an operator's ``READ_API_PORT=`` is no
    read API, not a start-up refusal ("unable to parse string as an integer"), and a
    producer is told so rather than pointed at one.  0 still picks a free port, and a
    value that is no number is still refused, naming the setting."""
    os.environ["CONSUMERGEN_READ_API_PORT"] = empty
    settings = load_settings()
    assert settings.read_api_port is None
    with pytest.raises(ConfigError, match="CONSUMERGEN_READ_API_URL: not set, and the read API"):
        read_api_url(settings)
    os.environ["CONSUMERGEN_READ_API_PORT"] = "0"
    assert load_settings().read_api_port == 0
    with pytest.raises(ConfigError, match="CONSUMERGEN_READ_API_PORT"):
        load_settings(read_api_port="eight")
