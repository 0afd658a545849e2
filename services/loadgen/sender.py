"""Send generated traffic to the ingestion batch endpoint from one or more processes and keep the manifest.

Each worker process owns its share of the events, its own Traffic (seed, worker index) and its own
manifest part; the parent shows progress and joins the parts into one manifest. Every loop is
bounded: a worker stops after its events or at its deadline, whichever comes first.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson

from services.loadgen.manifest import Entry, entry_for, read_manifest, record_send, summary, write_manifest
from services.loadgen.traffic import Traffic, TrafficSpec, item_id

BATCH_PATH = "/v1/analytics/batch"
RECENT_EVENTS = 10_000  # duplicates are drawn from this many most recently sent events
SCHEDULE_RATE_WHEN_UNPACED = 10_000.0
MAX_RETRY_PAUSE_S = 1.0


@dataclass(frozen=True)
class WorkerPlan:
    url: str
    write_key: str | None
    events: int
    rate: float  # events/s of this worker; 0 = as fast as the schedule of SCHEDULE_RATE_WHEN_UNPACED allows
    batch_size: int
    duplicate_fraction: float
    deadline_s: float  # stop sending after this many seconds
    spec: TrafficSpec
    manifest_part: Path
    retries: int = 2
    timeout_s: float = 10.0


class Outcome(NamedTuple):
    status: int  # HTTP status, 0 when there was no answer
    accepted: bool
    adjusted: bool
    retryable: bool


class Progress(NamedTuple):
    worker: int
    sends: int
    accepted: int
    not_accepted: int
    done: bool


def plan_batches(
    traffic: Traffic, total: int, batch_size: int, duplicate_fraction: float, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    """Batches of `total` fresh events, plus duplicates (same event.id) of events in earlier batches."""
    recent: list[dict[str, Any]] = []
    produced = 0
    while produced < total:
        duplicates = (
            [rng.choice(recent) for _ in range(batch_size) if rng.random() < duplicate_fraction]
            if recent
            else []
        )
        duplicates = duplicates[: batch_size - 1]
        fresh = traffic.events(min(batch_size - len(duplicates), total - produced))
        produced += len(fresh)
        batch = fresh + duplicates
        rng.shuffle(batch)
        recent.extend(fresh)
        if len(recent) > 2 * RECENT_EVENTS:
            del recent[:RECENT_EVENTS]
        yield batch


def item_outcomes(status: int, body: Any, count: int) -> list[Outcome]:
    """Per-item outcomes of one batch response (ingestion answers per-item results on 202, 400 and 503)."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return [Outcome(status, False, False, status in (0, 429, 503) or status >= 500)] * count
    return [
        Outcome(
            status,
            r.get("status") == "accepted",
            bool(r.get("timestamp_adjusted")),
            r.get("status") == "failed",
        )
        for r in results
    ]


def post_batch(client: httpx.Client, batch: list[dict[str, Any]]) -> tuple[list[Outcome], float]:
    """Outcomes per item and the pause the server asked for before a retry."""
    try:
        response = client.post(BATCH_PATH, content=orjson.dumps({"events": batch}))
    except httpx.HTTPError:
        return item_outcomes(0, None, len(batch)), MAX_RETRY_PAUSE_S
    try:
        body = response.json()
    except ValueError:
        body = None
    pause = min(float(response.headers.get("retry-after", 0) or 0), MAX_RETRY_PAUSE_S)
    return item_outcomes(response.status_code, body, len(batch)), pause


def deliver(
    client: httpx.Client, batch: list[dict[str, Any]], entries: dict[str, Entry], retries: int
) -> tuple[int, int]:
    """Post a batch; items the server could not write (503, no answer) are posted again, at most `retries`
    times. Returns (posts, events newly accepted)."""
    pending, posts, newly = batch, 0, 0
    for attempt in range(retries + 1):
        outcomes, pause = post_batch(client, pending)
        posts += len(pending)
        for event, outcome in zip(pending, outcomes, strict=True):
            entry = entries[item_id(event)]
            newly += outcome.accepted and not entry["accepted"]
            record_send(entry, outcome.status, outcome.accepted, outcome.adjusted)
        pending = [
            e
            for e, o in zip(pending, outcomes, strict=True)
            if o.retryable and not entries[item_id(e)]["accepted"]
        ]
        if not pending or attempt == retries:
            break
        time.sleep(pause)
    return posts, newly


def run_worker(plan: WorkerPlan, progress: Any) -> None:
    """One sender process: generate, pace, post, record; writes its manifest part at the end."""
    rng = random.Random(f"duplicates:{plan.spec.seed}:{plan.spec.worker}")
    entries: dict[str, Entry] = {}
    headers = {
        "Content-Type": "application/json",
        **({"X-Write-Key": plan.write_key} if plan.write_key else {}),
    }
    # The schedule starts when this process does (spawning takes seconds on a busy machine): an event's
    # timestamp is never older than the moment it could first be sent.
    traffic = Traffic(replace(plan.spec, start_ms=max(plan.spec.start_ms, int(time.time() * 1000))))
    started = time.monotonic()
    posts = accepted = 0
    with httpx.Client(base_url=plan.url, headers=headers, timeout=plan.timeout_s) as client:
        for batch in plan_batches(traffic, plan.events, plan.batch_size, plan.duplicate_fraction, rng):
            if time.monotonic() - started > plan.deadline_s:
                break
            for event in batch:
                event_id = item_id(event)
                if event_id not in entries:
                    entries[event_id] = entry_for(
                        event, event_id in traffic.late_ids, traffic.expected.pop(event_id, None)
                    )
            wait_until_past(max(event["timestamp"] for event in batch))
            sent, newly = deliver(client, batch, entries, plan.retries)
            posts, accepted = posts + sent, accepted + newly
            progress.put(Progress(plan.spec.worker, posts, accepted, len(entries) - accepted, done=False))
            pace(started, len(entries), plan.rate)
            traffic.catch_up(int(time.time() * 1000))
    write_manifest(plan.manifest_part, entries.values())
    progress.put(Progress(plan.spec.worker, posts, accepted, len(entries) - accepted, done=True))


def wait_until_past(timestamp_ms: int) -> None:
    """Return once the wall clock has reached timestamp_ms. A batch holds a stretch of the schedule; posted
    before its newest timestamp has passed, it would carry future timestamps, which ingestion replaces by its
    receive time beyond RTAP_INGESTION__MAX_FUTURE_SKEW_MS (and the manifest could no longer place those
    events in windows)."""
    time.sleep(max(0.0, timestamp_ms / 1000 - time.time()))


def pace(started: float, sent: int, rate: float) -> None:
    if rate > 0:
        time.sleep(max(0.0, started + sent / rate - time.monotonic()))


@dataclass(frozen=True)
class LoadConfig:
    url: str
    events: int
    rate: float
    processes: int
    batch_size: int
    seed: int
    manifest: Path
    write_key: str | None = None
    duplicate_fraction: float = 0.0
    out_of_order_ms: int = 0
    late_fraction: float = 0.0
    late_ms: int = 0
    deadline_s: float = 600.0
    retries: int = 2


def worker_plans(config: LoadConfig, start_ms: int) -> list[WorkerPlan]:
    """Split the events and the rate evenly over the processes; each worker gets its own seed stream and
    part file."""
    n = max(1, min(config.processes, config.events))
    per_rate = config.rate / n if config.rate > 0 else 0.0
    spec = TrafficSpec(
        seed=config.seed,
        start_ms=start_ms,
        rate=per_rate or SCHEDULE_RATE_WHEN_UNPACED,
        out_of_order_ms=config.out_of_order_ms,
        late_fraction=config.late_fraction,
        late_ms=config.late_ms,
    )
    return [
        WorkerPlan(
            url=config.url,
            write_key=config.write_key,
            events=config.events // n + (i < config.events % n),
            rate=per_rate,
            batch_size=config.batch_size,
            duplicate_fraction=config.duplicate_fraction,
            deadline_s=config.deadline_s,
            spec=replace(spec, worker=i),
            retries=config.retries,
            manifest_part=config.manifest.with_name(f"{config.manifest.name}.part{i}"),
        )
        for i in range(n)
    ]


def run_load(
    config: LoadConfig, on_progress: Callable[[dict[int, Progress]], None] = lambda _: None
) -> dict[str, int]:
    """Run the workers, report progress, join the manifest parts; returns the manifest summary."""
    plans = worker_plans(config, int(time.time() * 1000))
    context = multiprocessing.get_context("spawn")
    updates = context.Queue()
    processes = [
        context.Process(target=run_worker, args=(plan, updates), name=f"rtap-load-{i}")
        for i, plan in enumerate(plans)
    ]
    for p in processes:
        p.start()
    latest = collect_progress(updates, processes, config.deadline_s + 60, on_progress)
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    missing = [i for i in range(len(plans)) if not (i in latest and latest[i].done)]
    if missing:
        raise RuntimeError(f"load workers {missing} did not finish (see their output above)")
    return join_parts(config.manifest, [p.manifest_part for p in plans])


def collect_progress(
    updates: Any,
    processes: Sequence[BaseProcess],
    limit_s: float,
    on_progress: Callable[[dict[int, Progress]], None],
) -> dict[int, Progress]:
    latest: dict[int, Progress] = {}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not all(
        latest.get(i) and latest[i].done for i in range(len(processes))
    ):
        try:
            update = updates.get(timeout=0.25)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                break
            continue
        latest[update.worker] = update
        on_progress(latest)
    return latest


def join_parts(manifest: Path, parts: list[Path]) -> dict[str, int]:
    entries = [e for part in parts for e in read_manifest(part)]
    write_manifest(manifest, entries)
    for part in parts:
        part.unlink()
    return summary(entries)
