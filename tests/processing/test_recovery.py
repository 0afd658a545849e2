"""Faults mid-stream: kill -9 of the TaskManager, then loss of the job itself (the supervisor resubmits it
from the newest retained checkpoint). Every window key ends with its exact count, none missing."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.processing.conftest import WINDOW_MS, Feed, event, read_metrics, wait_for_running_job, window_base

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.slow]

WINDOWS = 6
PER_WINDOW = 25
BASE = window_base() - WINDOWS * WINDOW_MS


def window_events(w: int) -> list[dict]:
    start = BASE + w * WINDOW_MS
    return [
        event(f"s{w}-{i % 5}", f"u{i % 7}", "page_view", start + i * (WINDOW_MS // PER_WINDOW))
        for i in range(PER_WINDOW)
    ]


def completed_checkpoints(s, job_id: str) -> int:
    url = f"http://127.0.0.1:{s.flink.rest_port}/jobs/{job_id}/checkpoints"
    return httpx.get(url, timeout=5).json()["counts"]["completed"]


def wait_for_checkpoint(s, job_id: str, after: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if completed_checkpoints(s, job_id) > after:
            return
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint completed within {timeout}s")


def test_every_window_has_its_final_value_after_taskmanager_kill_and_job_loss(
    harness, job_settings, supervisor
):
    s, feed = job_settings, Feed(job_settings)
    job_id = wait_for_running_job(s)
    for w in (0, 1):
        feed.send(*window_events(w))
    feed.heartbeat(BASE + 2 * WINDOW_MS + 2_500)
    wait_for_checkpoint(s, job_id, completed_checkpoints(s, job_id))

    taskmanager = harness.stack.component("flink-taskmanager")
    taskmanager.kill9()
    for w in (2, 3):
        feed.send(*window_events(w))
    taskmanager.start()
    feed.heartbeat(BASE + 4 * WINDOW_MS + 2_500)
    wait_for_running_job(s)
    wait_for_checkpoint(s, job_id, completed_checkpoints(s, job_id))

    httpx.patch(f"http://127.0.0.1:{s.flink.rest_port}/jobs/{job_id}", params={"mode": "cancel"}, timeout=10)
    for w in (4, 5):
        feed.send(*window_events(w))
    new_job = wait_for_running_job(s, not_id=job_id)
    assert new_job != job_id
    feed.heartbeat(BASE + WINDOWS * WINDOW_MS + 2_500)

    expected = {(BASE + w * WINDOW_MS, "page_view", "desktop"): (PER_WINDOW, 7) for w in range(WINDOWS)}
    got = read_metrics(
        s,
        "event_metrics",
        lambda r: (
            expected.keys() <= r.keys()
            and all((r[k]["events"], r[k]["unique_users"]) == v for k, v in expected.items())
        ),
        timeout=120,
    )
    assert {k: (v["events"], v["unique_users"]) for k, v in got.items()} == expected


def supervisor_health(s, timeout: float = 15.0) -> dict:
    """The supervisor's /healthz once it reports the job RUNNING (it polls Flink every watch interval)."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"http://127.0.0.1:{s.processing.port}/healthz", timeout=5).json()
        if health["job"]["state"] == "RUNNING" or time.monotonic() > deadline:
            return health
        time.sleep(0.5)


def test_the_resubmitted_job_resumed_from_a_checkpoint(job_settings, supervisor):
    health = supervisor_health(job_settings)
    assert health["job"]["state"] == "RUNNING", health
    assert health["job"]["submissions"] == 2
    assert "/chk-" in health["job"]["resumed_from"]
    metrics = httpx.get(f"http://127.0.0.1:{job_settings.processing.port}/metrics", timeout=5).text
    assert "rtap_processing_job_running 1.0" in metrics
