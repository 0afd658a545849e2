"""One `rtap bench` run: ingest phases, then a private full stack under `rtap load` at a fixed rate,
reconciled against the manifest, with freshness watchers, the accepted-rate scraper and the memory sampler
running throughout. Every wait has a deadline; everything started here is stopped on the way out, also on
Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from infrastructure.bench.freshness import (
    CacheStream,
    ClickHousePoller,
    delays_ms,
    distribution,
    kafka_arrivals,
)
from infrastructure.bench.ingest import run_ingest
from infrastructure.bench.memory import MemorySampler, PidOf
from infrastructure.bench.stack import INFRASTRUCTURE, MONITORING, full_stack, load_command, stack_env
from infrastructure.bench.throughput import AcceptedRate
from services.loadgen.manifest import accepted, read_manifest
from services.loadgen.reconcile import Layers, expected_metrics, reconcile_run
from services.processing.registry import load_schemas
from shared.settings import FlinkSettings, Settings

FRESHNESS_JOBS = ("event_metrics", "performance_metrics")
SUBSCRIBE_TIMEOUT_S = 30
# The reconciliation reads the whole run's raw rows through /v1/sql, on a machine the run may have saturated.
BENCH_SQL_MAX_SECONDS = 300
LOAD_GRACE_S = 120  # beyond --duration: sender start-up and catching up, before the load is stopped


@dataclass(frozen=True)
class BenchConfig:
    rate: float = 5_000
    duration: float = 60
    ingest_duration: float = 10
    skip_ingest: bool = False
    processes: int = 2
    batch_size: int = 500
    session_gap_s: int = 5
    settle_timeout_s: float = 180
    warmup_s: float = 10
    watermark_delay_ms: int = 5_000
    seed: int = 1


Step = Callable[[str], None]
Tick = Callable[
    [float, float, float], None
]  # seconds into the load, accepted events/s just now, accepted in total


def bench_env(config: BenchConfig) -> dict[str, str]:
    """Settings of the bench stack that differ from `rtap up`: a short session gap (sessions close within
    the run), the watermark delay (an event whose request takes longer than it on a saturated machine is late
    by policy), and read limits large enough to reconcile every session window and raw row through the
    APIs."""
    limit = str(max(100_000, int(config.rate * config.duration)))
    return {
        "RTAP_PROCESSING__SESSION_GAP_SECONDS": str(config.session_gap_s),
        "RTAP_FLINK__TASK_SLOTS": str(FlinkSettings().task_slots),
        "RTAP_PROCESSING__WATERMARK_DELAY_MS": str(config.watermark_delay_ms),
        "RTAP_CACHE__MAX_LIMIT": limit,
        "RTAP_CACHE__WINDOWS_PER_KEY": limit,
        "RTAP_STORAGE__MAX_LIMIT": limit,
        "RTAP_STORAGE__SQL_MAX_ROWS": limit,
        "RTAP_STORAGE__SQL_MAX_RESULT_BYTES": str(1 << 30),
        "RTAP_STORAGE__SQL_MAX_SECONDS": str(BENCH_SQL_MAX_SECONDS),
    }


def run_bench(config: BenchConfig, out_dir: Path, step: Step, tick: Tick) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": asdict(config),
        "machine": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not config.skip_ingest:
        step(f"ingest: benchmarks/ingestion.py --duration {config.ingest_duration:g} (private broker)")
        results["ingest"] = run_ingest(config.ingest_duration, out_dir)
    tmp = Path(tempfile.mkdtemp(prefix="rtap-bench-"))
    try:
        with full_stack(
            tmp / "state",
            infrastructure=INFRASTRUCTURE + MONITORING,
            on_start=lambda name: step(f"starting {name}"),
            **bench_env(config),
        ) as (s, harness, services):
            processes = {
                name: harness.stack.component(name).pid for name in harness.started if name != "topics"
            }
            processes.update({name: svc.pid for name, svc in services.items()})
            results.update(end_to_end(s, config, processes, tmp, out_dir, step, tick))
            step("stopping the stack")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    return results


def end_to_end(
    s: Settings,
    config: BenchConfig,
    processes: dict[str, PidOf],
    tmp: Path,
    out_dir: Path,
    step: Step,
    tick: Tick,
) -> dict[str, Any]:
    schemas = load_schemas()
    fresh = {job: schemas[job] for job in FRESHNESS_JOBS}
    watch_s = (
        config.duration + LOAD_GRACE_S + 2 * config.settle_timeout_s
    )  # the reconciliation deadline and its last reads
    window_ms, delay_ms = s.processing.window_seconds * 1000, s.processing.watermark_delay_ms
    memory = MemorySampler(processes).start()
    if config.warmup_s > 0:
        warm_up(s, config, tmp, out_dir, step)
    rate = AcceptedRate(f"{s.ingestion.url}/metrics").start()
    cache = CacheStream(s.cache.url, fresh, watch_s).start()
    lookback_ms = 6 * window_ms + delay_ms + 60_000
    clickhouse = ClickHousePoller(s.storage.url, fresh, watch_s, lookback_ms=lookback_ms).start()
    try:
        if not cache.wait_subscribed(SUBSCRIBE_TIMEOUT_S):
            raise RuntimeError(f"the cache SSE stream did not subscribe within {SUBSCRIBE_TIMEOUT_S}s")
        step(
            f"load: rtap load --rate {config.rate:g} --duration {config.duration:g}"
            f" --processes {config.processes}"
        )
        manifest = tmp / "manifest.jsonl"
        load_started = time.time()
        run_load(s, config, manifest, out_dir / "load.log", tick, rate)
        load_ended = time.time()
        entries = read_manifest(manifest)
        step(f"reconciling {len(entries):,} events against every layer")
        problems = reconcile_run(Layers(s), schemas, entries, config.settle_timeout_s)
        settled = time.time() - load_ended
        step("freshness: reading the metric topics")
    finally:
        for watcher in (cache, clickhouse, rate, memory):
            watcher.stop()
    counted = list(accepted(entries))
    expected = expected_metrics(counted, s)
    layers = Layers(s)

    def close_ms(key: tuple[Any, ...]) -> float:
        window_start: int = key[0]
        return window_start + window_ms + delay_ms

    freshness = {}
    for job, schema in fresh.items():
        seen = {
            "cache": cache.arrivals[job],
            "clickhouse": clickhouse.arrivals[job],
            "kafka": kafka_arrivals(layers, schema),
        }
        freshness[job] = {
            layer: distribution(*delays_ms(schema, expected[job], arrivals, close_ms))
            for layer, arrivals in seen.items()
        }
    times, rates = rate.series(load_started)
    load_seconds = load_ended - load_started
    return {
        "end_to_end": {
            "target_rate": config.rate,
            "duration_s": config.duration,
            "events": len(entries),
            "accepted": len(counted),
            "not_accepted": sum(not e["accepted"] for e in entries),
            "load_seconds": load_seconds,
            "accepted_per_s": len(counted) / max(load_seconds, 1e-9),
            "sustained_accepted_per_s": rate.sustained(),
            "differences": len(problems),
            "differences_sample": problems[:20],
            "reconciled_exactly": not problems,
            "settle_seconds": settled,
            "windows": {job: len(keys) for job, keys in expected.items()},
        },
        "throughput_series": {"t": times, "events_per_s": rates},
        "freshness": freshness,
        "freshness_watchers": {
            "cache_stream_errors": cache.errors,
            "clickhouse_polls": clickhouse.polls,
            "clickhouse_errors": clickhouse.errors,
        },
        "memory": {**memory.summary(), "series": memory.series()},
    }


def warm_up(s: Settings, config: BenchConfig, tmp: Path, out_dir: Path, step: Step) -> None:
    """A short load before the measured one (the first windows of a fresh job include JIT and class
    loading), then a wait until a new window begins, so the measured run's windows hold only its own events
    (reconciled exactly)."""
    rate = min(config.rate, 1_000)
    step(f"warm-up: rtap load --rate {rate:g} --duration {config.warmup_s:g}")
    warm = replace(config, rate=rate, duration=config.warmup_s, seed=config.seed + 1_000)
    run_load(s, warm, tmp / "warmup.jsonl", out_dir / "warmup.log", lambda *_: None)
    window_ms = s.processing.window_seconds * 1000
    next_window = (
        time.time() * 1000 // window_ms + 1
    ) * window_ms  # the sender posts no event before its timestamp
    time.sleep(max(0.0, next_window / 1000 - time.time()))


def run_load(
    s: Settings,
    config: BenchConfig,
    manifest: Path,
    log_path: Path,
    tick: Tick,
    rate: AcceptedRate | None = None,
) -> None:
    """`rtap load` in its own process group (its sender processes with it), bounded by duration +
    LOAD_GRACE_S."""
    argv = load_command(
        manifest,
        "--rate",
        f"{config.rate:g}",
        "--duration",
        f"{config.duration:g}",
        "--processes",
        str(config.processes),
        "--batch-size",
        str(config.batch_size),
        "--seed",
        str(config.seed),
        "--max-seconds",
        f"{config.duration + LOAD_GRACE_S / 2:g}",
    )
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env={**stack_env(s), "COLUMNS": "120"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            samples = rate.samples if rate else []
            first = samples[-1][1] if samples else 0.0
            while proc.poll() is None and time.monotonic() - started < config.duration + LOAD_GRACE_S:
                time.sleep(1)
                recent = samples[-2:]
                now_rate = (
                    (recent[1][1] - recent[0][1]) / max(recent[1][0] - recent[0][0], 1e-9)
                    if len(recent) == 2
                    else 0.0
                )
                tick(time.monotonic() - started, now_rate, (recent[-1][1] if recent else first) - first)
        finally:
            stop_group(proc)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"rtap load failed (exit {proc.returncode}): {' | '.join(tail)}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the load's process group if it still runs, SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
