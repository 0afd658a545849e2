"""One typed settings model for the whole pipeline.

Every value can be set by environment variable: RTAP_<SECTION>__<FIELD>, for example
RTAP_KAFKA__BOOTSTRAP=broker:9092 or RTAP_INGESTION__PORT=8000. Top-level fields use
RTAP_<FIELD> (RTAP_STATE_DIR, RTAP_ENV).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast
from urllib.parse import quote

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "password", "test"}
# A record's key (context.session_id: at most 256 characters, 1 KiB of UTF-8), its headers, the record and
# batch framing and the produce request header fit in this.
RECORD_FRAMING_BYTES = 4_096
# Every local component listens here by default; the defaults below name it, nothing else in product code.
LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# Instance k (from 0) of a replicated local process (a Kafka broker, a cache process) listens on its section's
# port plus k times this; Flink TaskManagers' metrics ports are adjacent instead (one reporter port range).
INSTANCE_PORT_STEP = 100
# In the state directory: {"format": ..., "profile": ...}, written by the local runtime when it creates it.
STATE_MARKER = ".rtap-state"


def instance_port(port: int, index: int) -> int:
    """The port of instance `index` (from 0) of a replicated process whose first one listens on `port`."""
    return port + index * INSTANCE_PORT_STEP


def client_url(host: str, port: int) -> str:
    """The http URL a client on the same machine uses for a server bound to host:port (a wildcard bind is
    reached over loopback)."""
    return f"http://{LOOPBACK if host in WILDCARD_HOSTS else host}:{port}"


class ServiceAddress(BaseModel):
    """Where one of the project's HTTP services listens, and how a client on the same machine reaches it."""

    host: str = LOOPBACK
    port: int

    @property
    def url(self) -> str:
        return client_url(self.host, self.port)


class KafkaSettings(BaseModel):
    # "": every local broker (instance_port of `port`); set it for brokers elsewhere (Compose: kafka:9092)
    bootstrap: str = ""
    brokers: int = Field(default=1, ge=1)  # local KRaft nodes, each broker and controller (one voter each)
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    # Of every topic the project creates, and of Kafka's internal topics on the local brokers.
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int = Field(default=1, ge=1)
    jmx_exporter_port: int = 9404
    # How often storage and cache read their consumer group's lag from the broker (served by /metrics).
    group_lag_interval_seconds: float = Field(default=5.0, gt=0)
    # The largest record Kafka accepts: the broker's message.max.bytes (local and Compose) and the ingestion
    # producer's. Ingestion answers 413 for an event whose value exceeds max_event_bytes (this less room for
    # the key, headers and batch framing), so nothing a client sends can reach Kafka and be refused there.
    max_record_bytes: int = Field(default=1_000_000, ge=65_536)

    @property
    def max_event_bytes(self) -> int:
        """The largest event value (JSON record) that fits in max_record_bytes with any key and headers."""
        return self.max_record_bytes - RECORD_FRAMING_BYTES

    @model_validator(mode="after")
    def _bootstrap_and_replication_fit_the_brokers(self) -> KafkaSettings:
        """An empty bootstrap names every local broker; replication never asks for more brokers than run
        locally, and min.insync.replicas never exceeds the replication factor."""
        if not self.bootstrap:
            self.bootstrap = ",".join(
                f"{LOOPBACK}:{instance_port(self.port, k)}" for k in range(self.brokers)
            )
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"kafka.min_insync_replicas ({self.min_insync_replicas}) must not exceed "
                f"kafka.replication_factor ({self.replication_factor})"
            )
        return self


class TopicSettings(BaseModel):
    """Kafka topic names, set here only; shared/topics.py builds every topic from them."""

    events: str = "analytics_events"
    dead_letter: str = "dead_letter"
    metric_prefix: str = ""  # before each job's schema name; "" in production, tests use private topics


class FlinkSettings(BaseModel):
    # The JobManager's host (REST API, web UI, RPC) as every client reaches it; the local cluster binds it.
    rest_host: str = LOOPBACK
    rest_port: int = 8081
    taskmanager_host: str = LOOPBACK
    rpc_port: int = 6123
    jobmanager_metrics_port: int = 9249
    taskmanager_metrics_port: int = 9250
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "1536m"
    # Keyed state lives on the JVM heap (hashmap backend); managed memory only buffers window records.
    # Flink's default (0.4) leaves the heap so small that de-duplication state drives the GC into thrashing.
    taskmanager_managed_fraction: float = 0.1
    task_slots: int = 2
    taskmanagers: int = Field(default=1, ge=1)  # local TaskManager processes; metrics on adjacent ports
    parallelism: int = 2

    @property
    def rest_url(self) -> str:
        """Base URL of the Flink REST API (no trailing slash)."""
        return client_url(self.rest_host, self.rest_port)

    def taskmanager_port(self, index: int) -> int:
        """The metrics port of TaskManager `index` (from 0): taskmanager_metrics_port, then the next ones."""
        return self.taskmanager_metrics_port + index

    @property
    def taskmanager_metrics_urls(self) -> list[str]:
        return [
            f"{client_url(self.taskmanager_host, self.taskmanager_port(k))}/metrics"
            for k in range(self.taskmanagers)
        ]


class RedisSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 6379
    password: str | None = None
    exporter_port: int = 9121  # prometheus-redis-exporter next to the local redis-server
    # Local redis-server and Compose's redis (its environment holds the same variable).
    # Policy noeviction: a full Redis refuses writes, the cache consumer retries them without committing
    # (docs/operations.md, Redis memory).
    maxmemory: str = Field(default="256mb", pattern=r"^[1-9][0-9]*(b|kb|mb|gb)?$")

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"


class ClickHouseSettings(BaseModel):
    # Empty: embedded chDB in the state directory. Set: a ClickHouse server via clickhouse-connect,
    # for example http://default:secret@clickhouse:8123/rtap
    url: str = ""
    database: str = "rtap"
    # The password of `url`'s user, kept out of the URL (any character works);
    # set, it overrides one in the URL.
    password: str = ""
    # The storage API's read-only user on a ClickHouse server (its settings profile holds the SQL limits as
    # constraints; see docs/security.md). Empty: the API uses `url` with the limits sent per query.
    reader_url: str = ""
    reader_password: str = ""  # the password of reader_url's user, kept out of the URL like `password`


class HttpServerSettings(BaseModel):
    """Limits of the HTTP server of every service (ingestion, storage, cache), per process
    (shared/http_server.py)."""

    limit_concurrency: int = Field(default=1_000, ge=1)  # open connections and running requests; beyond: 503
    retry_after_seconds: int = Field(default=1, ge=0)  # Retry-After of that 503
    keep_alive_seconds: int = Field(default=5, ge=1)  # an idle keep-alive connection is closed after this
    # request head, from connect or its first byte; beyond: 408
    header_read_seconds: float = Field(default=10.0, gt=0)
    # request body, from the end of the head; beyond: 408
    body_read_seconds: float = Field(default=30.0, gt=0)
    max_header_bytes: int = Field(default=32_768, ge=1_024)  # request line and header fields; beyond: 431
    backlog: int = Field(default=1_024, ge=1)  # connections the kernel queues before the server accepts them
    shutdown_grace_seconds: int = Field(default=3, ge=0)  # open requests and streams get this long on SIGTERM


class PrometheusSettings(BaseModel):
    port: int = 9090


class IngestionSettings(ServiceAddress):
    port: int = 8000
    workers: int = Field(default=1, ge=1)  # uvicorn worker processes sharing the port (services/ingestion)
    write_keys: list[str] = Field(default_factory=list)
    max_body_bytes: int = 1_048_576
    max_batch_events: int = 1_000
    cors_origins: list[str] = Field(default_factory=list)
    # Clock-skew policy (services/ingestion/records.py): a client timestamp older than max_clock_skew_ms or
    # later than max_future_skew_ms, relative to the receive time, is replaced by the receive time.
    max_clock_skew_ms: int = Field(default=24 * 3600 * 1000, ge=0)
    max_future_skew_ms: int = Field(default=500, ge=0)  # at most half of processing.watermark_delay_ms
    produce_timeout_ms: int = 5_000
    heartbeat_interval_ms: int = 1_000
    retry_after_seconds: int = 5
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = 5
    queue_max_messages: int = 100_000
    # Privacy: "network" zeroes the last IPv4 octet / the last 80 bits of an IPv6 address (an unparseable
    # address is dropped) before the event reaches Kafka; country is looked up first. "none" keeps it whole.
    ip_truncation: Literal["none", "network"] = "network"


class ProcessingSettings(ServiceAddress):
    port: int = 8070  # the supervisor's /healthz and /metrics
    window_seconds: int = 10
    session_gap_seconds: int = 1_800
    top_pages: int = Field(default=10, ge=1, le=1_000)  # places per window of the top_pages job
    watermark_delay_ms: int = Field(default=2_000, ge=0)
    idle_timeout_ms: int = 5_000
    checkpoint_interval_ms: int = 5_000
    # A repeat of an event id within this many seconds (processing time) is dropped; 0 turns it off.
    dedup_seconds: int = 600
    job_modules: list[str] = Field(default_factory=list)
    job_name: str = "rtap-processing"
    consumer_group: str = "rtap-processing"
    parallelism: int = 0  # 0: the cluster's default parallelism
    watch_interval_seconds: float = 2.0
    backfill_margin_ms: int = 3_600_000  # how far past the range Kafka record times may lag event times
    # "exclude": bot events (device_category = bot) open no session in session_metrics; event_metrics and
    # performance_metrics keep them in their own device_category = bot rows either way.
    session_bots: Literal["exclude", "include"] = "exclude"


class StorageSettings(ServiceAddress):
    port: int = 8090
    batch_rows: int = 10_000
    batch_seconds: float = 1.0
    # Kafka record bytes (key + value) in one batch; also bounds what librdkafka prefetches.
    batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1_048_576)
    raw_events_ttl_days: int = 30
    read_keys: list[str] = Field(default_factory=list)
    consumer_group: str = "rtap-storage"
    events_table: str = "analytics_events"
    retry_max_seconds: float = 30.0
    session_timeout_ms: int = 10_000
    max_limit: int = 10_000
    max_body_bytes: int = 65_536
    sql_max_rows: int = 10_000
    sql_max_seconds: int = 10
    sql_max_memory_bytes: int = 512 * 1024 * 1024
    # ClickHouse's max_result_bytes; with chDB (which ignores it) the most JSON a result may take
    sql_max_result_bytes: int = 8 * 1024 * 1024
    sql_max_rows_to_read: int = 100_000_000
    sql_max_concurrent: int = 2  # read-only connections per query route; a query finding none free gets 503
    # GET /v1/events/export (backfill from the raw table): exports at once (one more gets 503), and the time
    # one export may take (ClickHouse's max_execution_time)
    export_max_concurrent: int = Field(default=1, ge=1)
    export_max_seconds: int = Field(default=3_600, ge=1)
    # `rtap up` waits for a starting storage process while its log grows (it re-sorts the raw table before it
    # serves, docs/operations.md "Re-sorting a table"): until the log stalls this long, or this long in all
    start_stall_seconds: float = Field(default=120.0, gt=0)
    start_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    analytics_max_days: int = Field(
        default=31, ge=1
    )  # the longest range (and funnel window) of /v1/analytics
    funnel_max_steps: int = Field(default=10, ge=2, le=32)  # ClickHouse's windowFunnel takes at most 32

    @model_validator(mode="after")
    def metric_reads_fit_the_reader_limits(self) -> StorageSettings:
        """A job's windows are read on the read-only connections of /v1/sql, under their row limit."""
        if self.max_limit > self.sql_max_rows:
            raise ValueError(
                f"storage.max_limit ({self.max_limit}) must not exceed storage.sql_max_rows "
                f"({self.sql_max_rows}): a /v1/jobs/{{job}}/windows read runs under the SQL result-row limit"
            )
        return self


class CacheSettings(ServiceAddress):
    port: int = 8080
    # Cache processes (consumer and API each), one consumer group; process k serves on instance_port(port, k).
    instances: int = Field(default=1, ge=1)
    windows_per_key: int = 1_000
    ttl_seconds: int = 7 * 24 * 3600
    read_keys: list[str] = Field(default_factory=list)
    max_lag_records: int = 10_000
    consumer_group: str = "rtap-cache"
    key_prefix: str = "rtap"
    batch_records: int = 500
    # A batch closes this soon after its first record, so a window is written within ~0.1 s of arriving.
    batch_seconds: float = Field(default=0.05, gt=0)
    batch_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_limit: int = 1_000
    sessions_job: str = ""  # the job behind /v1/sessions; "": the one job keyed by session_id alone
    index_columns: list[str] = Field(default_factory=lambda: ["user_id"])
    active_session_seconds: int = 300
    cors_origins: list[str] = Field(default_factory=list)
    session_timeout_ms: int = 10_000
    max_streams: int = Field(default=200, ge=1)  # open SSE streams per process; beyond: 429 with Retry-After
    stream_queue: int = Field(default=1_000, ge=1)  # windows a stream may fall behind before it is ended
    # the API's pool, its one pub/sub connection included
    redis_max_connections: int = Field(default=32, ge=2)
    # wait for a pooled connection, and for a Redis reply
    redis_timeout_seconds: float = Field(default=5.0, gt=0)


Profile = Literal["single", "ha"]
# A profile is only a preset of the topology's counts and of replication: a value set explicitly (environment,
# arguments) wins over the preset. "single" (the default) presets the fields' defaults.
PROFILES: dict[str, dict[str, dict[str, int]]] = {
    "single": {
        "kafka": {"brokers": 1, "replication_factor": 1, "min_insync_replicas": 1},
        "flink": {"taskmanagers": 1, "parallelism": 2},
        "ingestion": {"workers": 1},
        "cache": {"instances": 1},
    },
    "ha": {
        "kafka": {"brokers": 3, "replication_factor": 3, "min_insync_replicas": 2},
        "flink": {"taskmanagers": 2, "parallelism": 2},
        "ingestion": {"workers": 2},
        "cache": {"instances": 2},
    },
}


class StackChoice(BaseSettings):
    """Which local stack: its state directory and its profile. Read alone, before the other settings (whose
    presets the profile chooses), by stack_settings."""

    model_config = SettingsConfigDict(env_prefix="RTAP_", env_nested_delimiter="__", extra="ignore")

    profile: Profile = "single"
    state_dir: Path = Path(".rtap")

    @property
    def state_path(self) -> Path:
        return self.state_dir.resolve()


class Settings(StackChoice):
    env: Literal["local", "production"] = "local"
    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    flink: FlinkSettings = FlinkSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    ingestion: IngestionSettings = IngestionSettings()
    processing: ProcessingSettings = ProcessingSettings()
    storage: StorageSettings = StorageSettings()
    cache: CacheSettings = CacheSettings()
    http: HttpServerSettings = HttpServerSettings()

    @model_validator(mode="before")
    @classmethod
    def _profile_presets(cls, data: object) -> object:
        """Fill what the profile presets and the input leaves unset (sections given as mappings)."""
        if not isinstance(data, dict) or data.get("profile", "single") not in PROFILES:
            return data
        for section, preset in PROFILES[data.get("profile", "single")].items():
            given = data.get(section, {})
            if isinstance(given, dict):
                data[section] = {**preset, **given}
        return data

    @model_validator(mode="after")
    def _keys_required_in_production(self) -> Settings:
        if self.env != "production":
            return self
        for name, keys in (
            ("RTAP_INGESTION__WRITE_KEYS", self.ingestion.write_keys),
            ("RTAP_CACHE__READ_KEYS", self.cache.read_keys),
            ("RTAP_STORAGE__READ_KEYS", self.storage.read_keys),
        ):
            if not keys or any(k.lower() in PLACEHOLDER_SECRETS for k in keys):
                raise ValueError(f"{name} must be set to real keys when RTAP_ENV=production")
        return self

    @model_validator(mode="after")
    def _future_skew_leaves_half_the_watermark_delay(self) -> Settings:
        future, delay = self.ingestion.max_future_skew_ms, self.processing.watermark_delay_ms
        if 2 * future > delay:
            raise ValueError(
                f"RTAP_INGESTION__MAX_FUTURE_SKEW_MS ({future}) must be at most half of"
                f" RTAP_PROCESSING__WATERMARK_DELAY_MS ({delay}): one client stamping its events"
                f" {future} ms ahead moves the watermark that far and leaves every other client only"
                f" {self.lateness_allowance_ms} ms before its events are late"
                f" (docs/operations.md, Event time and clock skew)"
            )
        return self

    @property
    def lateness_allowance_ms(self) -> int:
        """How long after its own timestamp an event may reach ingestion and still be counted in its window,
        whatever timestamps other clients send: the watermark delay minus the future skew ingestion keeps."""
        return self.processing.watermark_delay_ms - self.ingestion.max_future_skew_ms

    @property
    def pipeline_jars_file(self) -> Path:
        """JSON list of the jars every submitted job ships (Kafka connector, the project's Java functions),
        written by the local runtime (`rtap setup`, the Flink JobManager's start), read by the driver."""
        return self.state_path / "jars" / "pipeline-jars.json"


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as RTAP_* environment variables, so child processes see exactly the same values."""
    env: dict[str, str] = {}
    for key, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                env[f"RTAP_{key.upper()}__{sub.upper()}"] = _env_value(subvalue)
        else:
            env[f"RTAP_{key.upper()}"] = _env_value(value)
    env["RTAP_STATE_DIR"] = str(settings.state_path)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def profile_env(profile: Profile) -> dict[str, str]:
    """The profile's preset as RTAP_* environment variables."""
    return {
        f"RTAP_{section.upper()}__{name.upper()}": str(value)
        for section, preset in PROFILES[profile].items()
        for name, value in preset.items()
    }


class SettingsError(ValueError):
    """The settings (environment variables, arguments) do not validate; the message names each field."""


def recorded_profile(state: Path) -> Profile | None:
    """The profile a state directory was created for, None when there is none yet (or it is unreadable)."""
    try:
        profile = json.loads((state / STATE_MARKER).read_text()).get("profile", "single")
    except (OSError, ValueError, AttributeError):
        return None
    return cast(Profile, profile) if profile in PROFILES else None


def stack_settings(profile: Profile | None = None) -> Settings:
    """The settings of the stack in the state directory, as every rtap command uses them. The profile is
    `profile` when given, else RTAP_PROFILE's when set, else the one the state directory records (`rtap up
    --profile` records it), else single; any other setting given explicitly wins over the profile's preset.
    Raises SettingsError when the settings do not validate."""
    try:
        choice = StackChoice()
        if profile is None and "profile" not in choice.model_fields_set:
            profile = recorded_profile(choice.state_path)
        return Settings(profile=profile) if profile else Settings()
    except ValidationError as exc:
        raise SettingsError(str(exc)) from None


@lru_cache
def get_settings() -> Settings:
    return Settings()
