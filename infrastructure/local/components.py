"""The local runtime's components. Each knows how to prepare its state, start, and report health."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from infrastructure.local import jars
from infrastructure.local.errors import RuntimeSetupError
from infrastructure.local.process import ManagedProcess, port_open, wait_until
from shared.settings import Settings, instance_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING_DIR = REPO_ROOT / "monitoring"


@dataclass
class Status:
    name: str
    state: str  # running | stopped | unhealthy | embedded
    pid: int | None
    url: str
    detail: str = ""

    @property
    def healthy(self) -> bool:
        return self.state in ("running", "embedded")


class Component:
    name: str = ""
    start_timeout: float = 60.0

    @property
    def family(self) -> str:
        """The name shared by every instance of a replicated component (kafka for kafka, kafka-2...)."""
        return self.name

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = settings.state_path

    # -- subclass hooks -------------------------------------------------------
    def url(self) -> str:
        return ""

    def ports(self) -> tuple[int, ...]:
        return ()

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def prepare(self) -> None:
        """Create config and state on disk (idempotent)."""

    def healthy(self) -> tuple[bool, str]:
        return all(port_open(p) for p in self.ports()), ""

    # -- shared mechanics -----------------------------------------------------
    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name,
            argv=self.argv(),
            run_dir=self.state / "run",
            log_dir=self.state / "logs",
            env=self.env(),
            cwd=REPO_ROOT,
            ports=self.ports(),
        )

    def pid(self) -> int | None:
        return ManagedProcess(self.name, [], self.state / "run", self.state / "logs").pid()

    def start(self) -> None:
        if self.pid():
            return
        self.prepare()
        proc = self.process
        proc.start()
        ok = self.wait_started(proc)
        if not ok:
            died = proc.exited_early()
            proc.stop(timeout=5)
            reason = f"exited: {died}" if died else f"not healthy: {self.start_limit()}"
            raise RuntimeSetupError(f"{self.name} failed to start ({reason}); log: {proc.log_file}")

    def wait_started(self, proc: ManagedProcess) -> bool:
        return wait_until(lambda: proc.pid() is not None and self.healthy()[0], self.start_timeout, 0.3)

    def start_limit(self) -> str:
        return f"not within {self.start_timeout:.0f}s"

    def stop(self) -> bool:
        return ManagedProcess(self.name, [], self.state / "run", self.state / "logs").stop()

    def kill9(self) -> None:
        ManagedProcess(self.name, [], self.state / "run", self.state / "logs").kill9()

    def status(self) -> Status:
        pid = self.pid()
        if not pid:
            return Status(self.name, "stopped", None, self.url())
        ok, detail = self.healthy()
        return Status(self.name, "running" if ok else "unhealthy", pid, self.url(), detail)


def java() -> str:
    path = shutil.which("java")
    if not path:
        raise RuntimeSetupError("Java 17+ is required for Kafka and Flink, and `java` is not on PATH")
    return path


def instance_name(name: str, index: int) -> str:
    """The process name of instance `index` (from 0) of a replicated component: kafka, kafka-2, kafka-3..."""
    return name if index == 0 else f"{name}-{index + 1}"


class Kafka(Component):
    """One KRaft node (broker and controller) of the kafka.brokers local nodes, each a voter of the quorum."""

    @property
    def family(self) -> str:
        return "kafka"

    def __init__(self, settings: Settings, index: int = 0):
        super().__init__(settings)
        self.index = index
        self.name = instance_name(self.family, index)
        k = settings.kafka
        self.port = instance_port(k.port, index)
        self.controller_port = instance_port(k.controller_port, index)
        self.jmx_exporter_port = instance_port(k.jmx_exporter_port, index)

    @property
    def dir(self) -> Path:
        return self.state / self.name

    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def ports(self) -> tuple[int, ...]:
        return (self.port, self.controller_port, self.jmx_exporter_port)

    def prepare(self) -> None:
        java()
        jars.resolve("kafka", self.state / "jars")
        k = self.settings.kafka
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        voters = ",".join(
            f"{node + 1}@127.0.0.1:{instance_port(k.controller_port, node)}" for node in range(k.brokers)
        )
        (self.dir / "server.properties").write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.index + 1}",
                    f"controller.quorum.voters={voters}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    f"default.replication.factor={k.replication_factor}",
                    f"offsets.topic.replication.factor={k.replication_factor}",
                    f"transaction.state.log.replication.factor={k.replication_factor}",
                    f"transaction.state.log.min.isr={k.min_insync_replicas}",
                    f"min.insync.replicas={k.min_insync_replicas}",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    # one limit with ingestion (KafkaSettings.max_record_bytes)
                    f"message.max.bytes={k.max_record_bytes}",
                    "",
                ]
            )
        )
        (self.dir / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        self._format_storage(data)

    def _format_storage(self, data: Path) -> None:
        meta = data / "meta.properties"
        if meta.exists():
            if "cluster.id=" not in meta.read_text(errors="replace"):
                raise RuntimeSetupError(
                    f"Kafka state is corrupt: {meta} has no cluster.id; move {self.dir} away to start fresh"
                )
            return
        if any(data.iterdir()):
            raise RuntimeSetupError(
                f"Kafka data directory {data} holds files but no meta.properties: corrupt or foreign state"
            )
        result = subprocess.run(
            [
                java(),
                "-cp",
                self._classpath(),
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={self._cluster_id()}",  # may start with "-": passed with "="
                "-c",
                str(self.dir / "server.properties"),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeSetupError(
                f"formatting Kafka storage failed: {(result.stderr or result.stdout).strip()[-300:]}"
            )

    def _cluster_id(self) -> str:
        """The one cluster id every local node is formatted with, kept in the state directory."""
        path = self.state / "kafka-cluster.id"
        if not path.exists():
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return path.read_text().strip()

    def _classpath(self) -> str:
        return str(self.state / "jars" / "kafka" / "*")

    def _jmx_exporter_agent(self) -> str:
        agent = jars.find_jar(self.state / "jars" / "kafka", "jmx_prometheus_javaagent")
        config = MONITORING_DIR / "kafka" / "jmx-exporter.yml"
        return f"-javaagent:{agent}=127.0.0.1:{self.jmx_exporter_port}:{config}"

    def argv(self) -> list[str]:
        heap = self.settings.kafka.heap
        return [
            java(),
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            self._jmx_exporter_agent(),
            "-cp",
            self._classpath(),
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        ]

    def wait_started(self, proc: ManagedProcess) -> bool:
        """A node without a running majority of voters cannot serve yet: it is started once it listens on
        its controller port, and the node that completes the majority waits for health."""
        if self._running_voters() * 2 <= self.settings.kafka.brokers:
            return wait_until(
                lambda: proc.pid() is not None and port_open(self.controller_port), self.start_timeout, 0.3
            )
        return super().wait_started(proc)

    def _running_voters(self) -> int:
        return sum(
            1
            for node in range(self.settings.kafka.brokers)
            if ManagedProcess(
                instance_name(self.family, node), [], self.state / "run", self.state / "logs"
            ).pid()
        )

    def healthy(self) -> tuple[bool, str]:
        if not port_open(self.port):
            return False, "broker port closed"
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{self.port}", request_timeout_ms=3000)
            try:
                topics = admin.list_topics()
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            return False, f"metadata request failed: {exc}"
        return True, f"{len(topics)} topics"


class Redis(Component):
    name = "redis"

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.settings.redis.port}"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis.port,)

    def prepare(self) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeSetupError(
                "redis-server is not installed; run ./rtap setup (Debian package redis-server)"
            )
        (self.state / "redis").mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        r = self.settings.redis
        argv = [
            "redis-server",
            "--port",
            str(r.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.state / "redis"),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--save",
            "60 1",
            "--maxmemory",
            r.maxmemory,
            "--maxmemory-policy",
            "noeviction",
        ]
        if r.password:
            argv += ["--requirepass", r.password]
        return argv

    def healthy(self) -> tuple[bool, str]:
        import redis

        try:
            client = redis.Redis.from_url(self.settings.redis.url, socket_timeout=1)
            client.ping()
            return True, f"{client.dbsize()} keys"
        except redis.RedisError as exc:
            return False, str(exc)


class RedisExporter(Component):
    """prometheus-redis-exporter (Debian package) for the local redis-server; the password goes by
    environment."""

    name = "redis-exporter"

    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.redis.exporter_port}/metrics"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis.exporter_port,)

    def prepare(self) -> None:
        if not shutil.which("prometheus-redis-exporter"):
            raise RuntimeSetupError(
                "prometheus-redis-exporter is not installed; "
                "run ./rtap setup (Debian package prometheus-redis-exporter)"
            )

    def argv(self) -> list[str]:
        r = self.settings.redis
        return [
            "prometheus-redis-exporter",
            f"-redis.addr=redis://{r.host}:{r.port}",
            f"-web.listen-address=127.0.0.1:{r.exporter_port}",
            "-redis-only-metrics",
        ]

    def env(self) -> dict[str, str]:
        password = self.settings.redis.password
        return {"REDIS_PASSWORD": password} if password else {}

    def healthy(self) -> tuple[bool, str]:
        try:
            text = httpx.get(self.url(), timeout=5).text
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        return True, "redis reachable" if "\nredis_up 1" in text else "redis unreachable (redis_up 0)"


class Prometheus(Component):
    name = "prometheus"

    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus.port}"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.prometheus.port,)

    def prepare(self) -> None:
        if not shutil.which("prometheus"):
            raise RuntimeSetupError(
                "prometheus is not installed; run ./rtap setup (Debian package prometheus)"
            )
        from infrastructure.local.prometheus_config import write_local_config

        write_local_config(self.settings, MONITORING_DIR / "prometheus", self.state / "prometheus")

    def argv(self) -> list[str]:
        d = self.state / "prometheus"
        return [
            "prometheus",
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.settings.prometheus.port}",
            "--storage.tsdb.retention.time=7d",
            "--web.enable-lifecycle",
        ]

    def healthy(self) -> tuple[bool, str]:
        return _http_ok(f"{self.url()}/-/ready")


def pyflink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


class FlinkProcess(Component):
    """Flink from PyFlink's wheel: a JobManager and a TaskManager, configured under state/flink/conf."""

    script = ""

    @property
    def conf_dir(self) -> Path:
        return self.state / "flink" / "conf"

    def url(self) -> str:
        return self.settings.flink.rest_url

    def env(self) -> dict[str, str]:
        return {
            "FLINK_HOME": str(pyflink_home()),
            "FLINK_CONF_DIR": str(self.conf_dir),
            "FLINK_LOG_DIR": str(self.state / "logs" / "flink"),
            "JAVA_HOME": str(Path(os.path.realpath(java())).parents[1]),
        }

    def prepare(self) -> None:
        java()
        write_flink_conf(self.settings, self.conf_dir)
        (self.state / "logs" / "flink").mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        return ["bash", str(pyflink_home() / "bin" / self.script), "start-foreground"]


class FlinkJobManager(FlinkProcess):
    name = "flink-jobmanager"
    script = "jobmanager.sh"
    start_timeout = 90.0

    def prepare(self) -> None:
        super().prepare()
        jars.prepare_pipeline_jars(self.settings)  # what the processing driver ships with each job

    def ports(self) -> tuple[int, ...]:
        f = self.settings.flink
        return (f.rest_port, f.rpc_port, f.jobmanager_metrics_port)

    def healthy(self) -> tuple[bool, str]:
        return _http_ok(f"{self.url()}/overview")


class FlinkTaskManager(FlinkProcess):
    """One of the flink.taskmanagers local TaskManagers; each serves its metrics on its own port."""

    @property
    def family(self) -> str:
        return "flink-taskmanager"

    script = "taskmanager.sh"
    start_timeout = 90.0

    def __init__(self, settings: Settings, index: int = 0):
        super().__init__(settings)
        self.index = index
        self.name = instance_name(self.family, index)
        self.metrics_port = settings.flink.taskmanager_port(index)

    def url(self) -> str:
        return self.settings.flink.taskmanager_metrics_urls[self.index]

    def ports(self) -> tuple[int, ...]:
        return (self.metrics_port,)

    def env(self) -> dict[str, str]:
        return {**super().env(), "FLINK_IDENT_STRING": self.name}  # its own log and pid file names

    def argv(self) -> list[str]:
        return [*super().argv(), f"-Dmetrics.reporter.prom.port={self.metrics_port}"]

    def healthy(self) -> tuple[bool, str]:
        try:
            overview = httpx.get(f"{self.settings.flink.rest_url}/overview", timeout=2).json()
        except (httpx.HTTPError, ValueError) as exc:
            return False, f"jobmanager unreachable: {exc}"
        slots, registered = overview.get("slots-total", 0), overview.get("taskmanagers", 0)
        ok = registered > self.index and slots > 0 and port_open(self.metrics_port)
        return ok, f"{registered} taskmanagers, {slots} slots, {overview.get('jobs-running', 0)} jobs running"


def write_flink_conf(settings: Settings, conf_dir: Path) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    default_conf = pyflink_home() / "conf"
    conf = yaml.safe_load((default_conf / "config.yaml").read_text())
    f = settings.flink
    state = settings.state_path / "flink"
    conf.update(
        {
            "jobmanager": {
                "bind-host": f.rest_host,
                "rpc": {"address": f.rest_host, "port": f.rpc_port},
                "memory": {"process": {"size": f.jobmanager_memory}},
                "execution": {"failover-strategy": "region"},
            },
            "taskmanager": {
                "bind-host": f.taskmanager_host,
                "host": f.taskmanager_host,
                "numberOfTaskSlots": f.task_slots,
                "load-balance": {"mode": "slots"},  # a job's subtasks spread over the TaskManagers
                "memory": {
                    "process": {"size": f.taskmanager_memory},
                    "managed": {"fraction": f.taskmanager_managed_fraction},
                },
            },
            "parallelism": {"default": f.parallelism},
            "rest": {"address": f.rest_host, "bind-address": f.rest_host, "port": f.rest_port},
            "execution": {
                "checkpointing": {
                    "dir": (state / "checkpoints").as_uri(),
                    "savepoint-dir": (state / "savepoints").as_uri(),
                    "externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
                    "num-retained": 3,
                }
            },
            "state": {"backend": {"type": "hashmap"}},
            "restart-strategy": {"type": "exponential-delay"},
            "python": {"executable": sys.executable, "client": {"executable": sys.executable}},
            "metrics": {
                "reporter": {
                    "prom": {
                        "factory": {"class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"},
                        "port": f"{f.jobmanager_metrics_port}-{f.taskmanager_port(f.taskmanagers - 1)}",
                    }
                }
            },
            # No jar upload or run over REST (/jars/*). Jobs are submitted with POST /jobs (the driver's REST
            # client and `flink run`), which this does not touch; the supervisor cancels with PATCH /jobs/:id,
            # which web.cancel.enable does not touch either (it only hides the web UI's button).
            "web": {"submit": {"enable": False}, "cancel": {"enable": False}},
        }
    )
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    for name in (
        "log4j-console.properties",
        "log4j.properties",
        "log4j-cli.properties",
        "logback-console.xml",
    ):
        if (default_conf / name).exists():
            shutil.copy(default_conf / name, conf_dir / name)


class ClickHouse(Component):
    """Embedded chDB in the state directory by default; a ClickHouse server when a URL is set."""

    name = "clickhouse"

    def url(self) -> str:
        return (
            self.settings.clickhouse.url.split("@")[-1]
            if self.settings.clickhouse.url
            else f"chdb://{self.state / 'clickhouse'}"
        )

    def start(self) -> None:
        ok, detail = self.healthy()
        if not ok:
            raise RuntimeSetupError(f"clickhouse is not usable: {detail}")

    def stop(self) -> bool:
        return False

    def healthy(self) -> tuple[bool, str]:
        if ManagedProcess("storage", [], self.state / "run", self.state / "logs").pid():
            # The storage service owns the chDB path (one process per path): ask it instead of opening chDB.
            try:
                body = httpx.get(f"{self.settings.storage.url}/readyz", timeout=5).json()
                return bool(body["clickhouse"]["ok"]), f"via storage: {body['clickhouse']['detail']}"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                return False, f"storage /readyz: {type(exc).__name__}"
        probe = [sys.executable, "-m", "services.storage.probe"]
        env = {
            **os.environ,
            "RTAP_STATE_DIR": str(self.state),
            "RTAP_CLICKHOUSE__URL": self.settings.clickhouse.url,
            "RTAP_CLICKHOUSE__PASSWORD": self.settings.clickhouse.password,
        }
        try:
            result = subprocess.run(probe, capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT)
        except subprocess.TimeoutExpired:
            return False, "probe timed out"
        line = (result.stdout.strip() or result.stderr.strip()).splitlines()[-1:] or [""]
        return result.returncode == 0, line[0][:200]

    def status(self) -> Status:
        ok, detail = self.healthy()
        state = ("embedded" if not self.settings.clickhouse.url else "running") if ok else "unhealthy"
        return Status(self.name, state, None, self.url(), detail)


def _http_ok(url: str) -> tuple[bool, str]:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    return response.status_code < 400, f"HTTP {response.status_code}"
