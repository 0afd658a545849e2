"""Keep the processing job running on the session cluster.

On start: if the job is not running, submit it, resuming from the newest retained checkpoint.
Then watch it over Flink's REST API and resubmit from the newest checkpoint whenever it
disappears or ends (for example after the JobManager restarted). On SIGTERM: cancel the job;
its retained checkpoint (RETAIN_ON_CANCELLATION) is the next resume point.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.processing.checkpoints import latest_checkpoint, record_submission
from services.processing.coordinator import JobCoordinator
from shared.logging import get_logger
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ACTIVE_STATES = {"INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "RECONCILING"}
SUBMIT_TIMEOUT_S = 300
MIN_RESUBMIT_INTERVAL_S = 10.0

log = get_logger("processing.supervisor")
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass
class JobStatus:
    state: str = "starting"  # starting | submitting | RUNNING | ... | cluster-unreachable | stopped
    job_id: str | None = None
    submissions: int = 0
    resumed_from: str | None = None
    last_error: str | None = None
    updated_at: float = field(default_factory=time.time)

    @property
    def healthy(self) -> bool:
        return self.state in ACTIVE_STATES or self.state in {"starting", "submitting"}


class FlinkRest:
    def __init__(self, settings: Settings):
        self.base = settings.flink.rest_url

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = httpx.get(f"{self.base}/jobs/overview", timeout=5).json()["jobs"]
        return jobs

    def cancel(self, job_id: str) -> None:
        httpx.patch(f"{self.base}/jobs/{job_id}", params={"mode": "cancel"}, timeout=10)


def submit_job(
    savepoint: str | None = None, extra_args: list[str] | None = None, env: dict[str, str] | None = None
) -> str:
    """Run the driver in a child process (its JVM gateway exits with it); return the job id."""
    argv = [
        sys.executable,
        "-m",
        "services.processing.driver",
        *(["--savepoint", savepoint] if savepoint else []),
        *(extra_args or []),
    ]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT_S,
        env=env or os.environ.copy(),
        cwd=REPO_ROOT,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        detail = [line for line in result.stderr.splitlines() if "Exception" in line or "Error" in line][-3:]
        raise RuntimeError(f"job submission failed (exit {result.returncode}): {' | '.join(detail)[:600]}")
    job_id: str = json.loads(lines[-1])["job_id"]
    return job_id


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.rest = FlinkRest(settings)
        self.name = JobCoordinator(settings).pipeline_name
        self.status = JobStatus()
        self.stopping = threading.Event()
        self._last_submit = 0.0

    def our_active_job(self) -> dict[str, Any] | None:
        jobs = [j for j in self.rest.jobs() if j["name"] == self.name and j["state"] in ACTIVE_STATES]
        return max(jobs, key=lambda j: j["start-time"], default=None)

    def check_once(self) -> None:
        try:
            job = self.our_active_job()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self._set(state="cluster-unreachable", last_error=type(exc).__name__)
            return
        if job:
            self._set(state=job["state"], job_id=job["jid"])
            return
        if time.monotonic() - self._last_submit >= MIN_RESUBMIT_INTERVAL_S:
            self.submit()

    def submit(self) -> None:
        self._last_submit = time.monotonic()
        checkpoint = latest_checkpoint(self.settings)
        resume = checkpoint.as_uri() if checkpoint else None
        self._set(state="submitting", resumed_from=resume)
        log.info("submitting job", pipeline=self.name, resume_from=resume)
        try:
            job_id = submit_job(resume)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.error("submission failed", error=str(exc))
            self._set(state="submit-failed", last_error=str(exc))
            return
        record_submission(self.settings, job_id)
        self._set(state="CREATED", job_id=job_id, submissions=self.status.submissions + 1)
        log.info("job submitted", job_id=job_id)

    def run(self) -> None:
        while not self.stopping.is_set():
            self.check_once()
            self.stopping.wait(self.settings.processing.watch_interval_seconds)

    def stop_job(self) -> None:
        try:
            job = self.our_active_job()
            if job:
                self.rest.cancel(job["jid"])
                log.info("job cancelled; resume point is its latest retained checkpoint", job_id=job["jid"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("could not cancel job", error=str(exc))
        self._set(state="stopped")

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self.status.updated_at = time.time()
