"""Service configuration from ``CONSUMERGEN_*`` environment variables and an optional file.

One settings object is shared by every entry point so that a typo in a variable fails
at start-up, naming the variable, instead of surfacing later as odd behaviour.

Why this module is long: it is the one catalogue of settings, each with its bound and
its description, and of the checks that tie settings together (the stall bound below
the poll-interval limit, the reply topic named after the events topic); split by
subsystem, a variable and the checks across settings would have no one place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.domain.errors import ConfigurationError

ENV_PREFIX = "CONSUMERGEN_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG_FILE"
#: Variables for the test suite (e.g. an existing broker); not service settings.
TEST_PREFIX = f"{ENV_PREFIX}TEST_"

#: ``database+driver://``: the service needs an asyncio driver, so the URL must name one.
_URL_WITH_DRIVER = re.compile(r"^[a-z][a-z0-9_]*\+[a-z][a-z0-9_]*://")

#: Kafka's protocol carries these settings in signed 32-bit (and 16-bit) fields: a value
#: beyond them would fail at the first request instead of at start.
INT32_MAX = 2_147_483_647
INT16_MAX = 32_767

#: Placement's placeholder owner for consumers created without project/user.
INCOMPLETE_OWNER = "00000000-0000-0000-0000-000000000000"


class ConfigError(ConfigurationError):
    """Configuration that cannot be used; the message names the offending setting."""


class Settings(BaseSettings):
    """Every knob of the service; each default is what a local run wants."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    # --- Kafka --------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    topic: str = Field("consumer-events", min_length=1, description="The events topic.")
    dlq_topic: str = Field("consumer-events.dlq", min_length=1, description="Dead-letter topic.")
    outcomes_topic: str | None = Field(
        None, description="Optional topic receiving one outcome record per event."
    )
    reply_topic: str = Field(
        "",
        description="Topic of request-reply outcomes, shared by the daemon and every "
        "producer; empty or unset: TOPIC.replies. The daemon sends an event's outcome to "
        "the partition its kafka_replyPartition header names; producers that wait for "
        "outcomes read their own partition of it. `topics create` creates it.",
    )
    allowed_reply_topics: str = Field(
        "",
        description="Further topics the daemon may reply to, comma-separated, besides "
        "REPLY_TOPIC. A request naming any other topic gets no reply (its outcome record "
        "still goes to the outcomes topic) and counts in consumergen_replies_refused_total.",
    )
    outcome_wait_seconds: float = Field(
        30.0, gt=0, description="How long a producer waits for an outcome by default."
    )
    group_id: str = Field("consumergen", min_length=1, description="Daemon consumer group.")
    group_instance_id: str | None = Field(
        None, description="Static membership id (group.instance.id) of this daemon."
    )
    client_id: str = Field("consumergen", min_length=1)
    topic_partitions: int = Field(
        6, ge=1, le=INT32_MAX, description="Partitions when creating topics."
    )
    topic_replication_factor: int = Field(1, ge=1, le=INT16_MAX)
    max_event_bytes: int = Field(
        1_048_576,
        ge=1024,
        # The daemon fetches up to twice this per partition, in a 32-bit field.
        le=INT32_MAX // 2,
        description="Events larger than this are dead-lettered as too_large.",
    )
    request_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=INT32_MAX // 1000,
        description="Bound on any single broker request, so nothing hangs.",
    )

    # --- Broker security ----------------------------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_keyfile_password: SecretStr | None = None

    # --- Database -----------------------------------------------------------------
    database_url: str = Field(
        "sqlite+aiosqlite:///consumergen.sqlite3",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://...",
    )
    database_pool_size: int = Field(5, ge=1)
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)
    sqlite_synchronous: Literal["full", "normal-may-lose-commits-on-power-loss"] = Field(
        "full",
        description="SQLite's PRAGMA synchronous in WAL mode. full: a commit is on disk "
        "before the offset past it is committed. The other value is faster and may roll "
        "back committed transactions after a power loss or OS crash, while their offsets "
        "stay committed: those events are lost for good (docs/durability.md).",
    )
    postgresql_allow_commit_loss_on_crash: bool = Field(
        False,
        description="Start even when the PostgreSQL server runs with fsync, "
        "synchronous_commit or full_page_writes off (a crash may then lose or corrupt "
        "committed transactions whose offsets are committed); without it the daemon "
        "refuses such a server at start (docs/durability.md).",
    )
    prune_older_than: str = Field(
        "90d",
        pattern=r"^\s*(\d+(\.\d+)?\s*[wdhmsWDHMS]\s*)+$",
        description="Default age bound of `db prune` (inbox rows and tombstones); keep it "
        "longer than the topic retention and the oldest archive you may replay.",
    )

    # --- Domain -------------------------------------------------------------------
    incomplete_project_id: str = Field(INCOMPLETE_OWNER, min_length=1, max_length=255)
    incomplete_user_id: str = Field(INCOMPLETE_OWNER, min_length=1, max_length=255)

    # --- CAS retries of unconditional events --------------------------------------
    cas_retry_attempts: int = Field(10, ge=1, description="Attempts before an event fails.")
    cas_retry_timeout_seconds: float = Field(5.0, gt=0, description="Total time bound.")
    cas_retry_wait_initial_seconds: float = Field(0.005, ge=0)
    cas_retry_wait_max_seconds: float = Field(0.5, gt=0)

    # --- Logging ------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    log_redaction_key: SecretStr | None = Field(
        None, description="HMAC key for UUID pseudonyms; random per process when unset."
    )

    # --- Daemon -------------------------------------------------------------------
    batch_max_events: int = Field(500, ge=1)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    infra_retry_wait_initial_seconds: float = Field(
        0.2, gt=0, description="First wait after a database or broker failure."
    )
    infra_retry_wait_max_seconds: float = Field(
        5.0, gt=0, description="Cap of the backoff while the infrastructure is down."
    )
    probe_interval_seconds: float = Field(
        2.0, gt=0, description="How often readiness re-checks the broker and the database."
    )
    session_timeout_ms: int = Field(
        10_000,
        ge=1,
        le=INT32_MAX,
        description="Group session timeout: a silent daemon is dropped after it.",
    )
    heartbeat_interval_ms: int = Field(
        3_000, ge=1, le=INT32_MAX, description="Group heartbeat interval."
    )
    max_poll_interval_ms: int = Field(
        300_000,
        ge=1,
        le=INT32_MAX,
        description="Longest a daemon may go between fetches and stay a member.",
    )
    stall_seconds: float | None = Field(
        None,
        gt=0,
        description="/livez fails when the fetch loop has not polled, or an assigned, "
        "unpaused partition with lag has not committed, for longer than this (a stall; "
        "below the poll-interval limit, at which the consumer would leave its group). "
        "Unset: 120 s, or 40% of CONSUMERGEN_MAX_POLL_INTERVAL_MS when that is less.",
    )
    liveness_stale_seconds: float = Field(
        30.0,
        gt=0,
        description="/livez fails when the event loop's heartbeat is older than this "
        "(a wedged loop, restarted by the orchestrator).",
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description="Longest the broker holds a fetch for data (bounds an idle partition's delay).",
    )
    producer_linger_ms: int = Field(
        0,
        ge=0,
        le=60_000,
        description="How long producers wait to fill a request.  0: a lone record goes "
        "at once (a request-reply loop pays any linger twice); records handed over while a "
        "request is in flight still share the next one.",
    )
    timeline_file: Path | None = Field(
        None,
        description="Benchmarks: write wall-clock stamps of sampled events at each "
        "boundary here when the daemon stops (service/daemon/timeline.py); off when unset.",
    )
    timeline_every: int = Field(
        1, ge=1, description="With CONSUMERGEN_TIMELINE_FILE: stamp one event in N (by offset)."
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio", description="uvloop needs the 'fast' extra (service/event_loop.py)."
    )
    health_host: str = "127.0.0.1"
    health_port: int = Field(8000, ge=0, le=65535, description="0 picks a free port.")
    read_api_host: str = "127.0.0.1"
    read_api_port: int | None = Field(
        8001,
        ge=0,
        le=65535,
        description="GET /v1/consumers/{uuid}, on a server of its own; 0 picks a free "
        "port, empty disables it.",
    )
    read_api_url: str | None = Field(
        None,
        description="Where producers read consumers; default http://READ_API_HOST:READ_API_PORT.",
    )
    read_api_token: SecretStr | None = Field(
        None,
        description="The bearer token producers send to the read API; the daemon accepts "
        "it too. When any token is configured, GET /v1/consumers/{uuid} requires "
        "'Authorization: Bearer' with one of them (the probes and /metrics stay open).",
    )
    read_api_tokens: SecretStr | None = Field(
        None,
        description="More tokens the read API accepts, comma-separated (rotation: the old "
        "and the new one at once).",
    )
    read_api_tokens_file: Path | None = Field(
        None,
        description="A file of tokens the read API accepts, one a line ('#' comments); "
        "re-read when it changes (a Kubernetes Secret volume), so tokens rotate without "
        "a restart.",
    )
    read_api_allow_anonymous: bool = Field(
        False,
        description="Serve the read API on a non-loopback READ_API_HOST without any token; "
        "without it such a daemon refuses to start.",
    )

    @field_validator("log_level", "security_protocol", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("read_api_port", mode="before")
    @classmethod
    def _empty_disables(cls, value: object) -> object:
        # The setting's own description: an empty value turns the read API off, the
        # way a Kubernetes or compose file spells "none" (pydantic reads it as an int).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("stall_seconds")
    @classmethod
    def _stall_before_poll_limit(cls, value: float | None, info: ValidationInfo) -> float | None:
        # A stall must be seen before aiokafka's own poll-interval limit makes the
        # consumer leave its group (issue 21: a partition stood still until then).
        limit = info.data.get("max_poll_interval_ms")
        if value is not None and limit is not None and value >= limit / 1000:
            raise ValueError(
                f"must be below {env_name('max_poll_interval_ms')} ({limit / 1000:g} s), "
                "or the consumer leaves its group before a stall is seen"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        # The shape only: which databases and drivers exist is the store's dialects'
        # to say (``service.store.dialects.dialect_for_url``, checked at start-up).
        if not _URL_WITH_DRIVER.match(value):
            raise ValueError(
                "must be DATABASE+DRIVER://..., e.g. sqlite+aiosqlite:///FILE or "
                "postgresql+asyncpg://... (the service only speaks asyncio drivers)"
            )
        return value

    @field_validator("reply_topic", mode="after")
    @classmethod
    def _default_reply_topic(cls, value: str, info: ValidationInfo) -> str:
        # One default name that the daemon and every producer derive alike.
        value = value.strip()
        return value or f"{info.data.get('topic', 'consumer-events')}.replies"

    @property
    def reply_topics_allowed(self) -> frozenset[str]:
        """The topics the daemon may send replies to: its reply topic and the extra ones."""
        extra = (name.strip() for name in self.allowed_reply_topics.split(","))
        return frozenset({self.reply_topic, *(name for name in extra if name)})

    @property
    def stall_bound(self) -> float:
        """``stall_seconds``, or its default: 120 s, below the poll-interval limit."""
        if self.stall_seconds is not None:
            return self.stall_seconds
        return min(120.0, 0.4 * self.max_poll_interval_ms / 1000)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(config_file: str | Path | None = None, **overrides: object) -> Settings:
    """Read the settings, turning any validation error into a one-line ``ConfigError``.

    ``config_file`` (or ``CONSUMERGEN_CONFIG_FILE``) names a dotenv-style file of
    ``CONSUMERGEN_*=value`` lines; real environment variables win over it, and
    explicit ``overrides`` (from CLI options) win over both.
    """
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() != CONFIG_FILE_VARIABLE
        and not name.upper().startswith(TEST_PREFIX)
        and name.upper()[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]} (is it misspelt?)")
    path = config_file or os.environ.get(CONFIG_FILE_VARIABLE)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}: no such file: {path}")
    clean: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(_env_file=path, **clean)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "?"
            problems.append(f"{env_name(field)}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
