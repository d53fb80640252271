"""Bad configuration fails at start-up with a message naming the setting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from service.config import ConfigError, load_settings


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
