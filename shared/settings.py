"""One typed settings model for the whole pipeline.

Every value can be set by environment variable: RTAP_<SECTION>__<FIELD>, for example
RTAP_KAFKA__BOOTSTRAP=broker:9092 or RTAP_INGESTION__PORT=8000. Top-level fields use
RTAP_<FIELD> (RTAP_STATE_DIR, RTAP_ENV).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "password", "test"}


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    replication_factor: int = 1
    jmx_exporter_port: int = 9404


class FlinkSettings(BaseModel):
    rest_port: int = 8081
    rpc_port: int = 6123
    jobmanager_metrics_port: int = 9249
    taskmanager_metrics_port: int = 9250
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "1536m"
    # Keyed state lives on the JVM heap (hashmap backend); managed memory only buffers window records.
    # Flink's default (0.4) leaves the heap so small that de-duplication state drives the GC into thrashing.
    taskmanager_managed_fraction: float = 0.1
    task_slots: int = 2
    parallelism: int = 2


class RedisSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = None
    exporter_port: int = 9121  # prometheus-redis-exporter next to the local redis-server

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"


class ClickHouseSettings(BaseModel):
    # Empty: embedded chDB in the state directory. Set: a ClickHouse server via clickhouse-connect,
    # for example http://default:secret@clickhouse:8123/rtap
    url: str = ""
    database: str = "rtap"


class PrometheusSettings(BaseModel):
    port: int = 9090


class IngestionSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    write_keys: list[str] = Field(default_factory=list)
    max_body_bytes: int = 1_048_576
    max_batch_events: int = 1_000
    cors_origins: list[str] = Field(default_factory=list)
    max_clock_skew_ms: int = 24 * 3600 * 1000
    max_future_skew_ms: int = 5 * 60 * 1000
    produce_timeout_ms: int = 5_000
    heartbeat_interval_ms: int = 1_000
    retry_after_seconds: int = 5
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = 5
    queue_max_messages: int = 100_000


class ProcessingSettings(BaseModel):
    window_seconds: int = 10
    session_gap_seconds: int = 1_800
    watermark_delay_ms: int = 2_000
    idle_timeout_ms: int = 5_000
    checkpoint_interval_ms: int = 5_000
    # A repeat of an event id within this many seconds (processing time) is dropped; 0 turns it off.
    dedup_seconds: int = 600
    job_modules: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8070
    job_name: str = "rtap-processing"
    events_topic: str = "analytics_events"
    metric_topic_prefix: str = ""  # "" in production; tests use a prefix to get private metric topics
    consumer_group: str = "rtap-processing"
    parallelism: int = 0  # 0: the cluster's default parallelism
    watch_interval_seconds: float = 2.0
    backfill_margin_ms: int = 3_600_000  # how far past the range Kafka record times may lag event times


class StorageSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8090
    batch_rows: int = 10_000
    batch_seconds: float = 1.0
    raw_events_ttl_days: int = 30
    read_keys: list[str] = Field(default_factory=list)
    consumer_group: str = "rtap-storage"
    events_table: str = "analytics_events"
    retry_max_seconds: float = 30.0
    session_timeout_ms: int = 10_000
    max_limit: int = 10_000
    sql_max_rows: int = 10_000
    sql_max_seconds: int = 10


class CacheSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    windows_per_key: int = 1_000
    ttl_seconds: int = 7 * 24 * 3600
    read_keys: list[str] = Field(default_factory=list)
    max_lag_records: int = 10_000
    consumer_group: str = "rtap-cache"
    key_prefix: str = "rtap"
    batch_records: int = 500
    max_limit: int = 1_000
    sessions_job: str = "session_metrics"
    index_columns: list[str] = Field(default_factory=lambda: ["user_id"])
    active_session_seconds: int = 300
    cors_origins: list[str] = Field(default_factory=list)
    session_timeout_ms: int = 10_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTAP_", env_nested_delimiter="__", extra="ignore")

    env: Literal["local", "production"] = "local"
    state_dir: Path = Path(".rtap")
    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    flink: FlinkSettings = FlinkSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    ingestion: IngestionSettings = IngestionSettings()
    processing: ProcessingSettings = ProcessingSettings()
    storage: StorageSettings = StorageSettings()
    cache: CacheSettings = CacheSettings()

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

    @property
    def state_path(self) -> Path:
        return self.state_dir.resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
