"""Which Flink jobs this pipeline submitted, and the newest completed checkpoint among them.

The session cluster's checkpoint dir is shared by every job on it, so the supervisor records the
ids of the jobs it submitted (one file per pipeline name) and only resumes from their checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import yaml

from shared.settings import Settings


def history_file(settings: Settings) -> Path:
    return settings.state_path / "processing" / f"{settings.processing.job_name}.jobs.json"


def submitted_jobs(settings: Settings) -> list[str]:
    path = history_file(settings)
    return json.loads(path.read_text()) if path.exists() else []


def record_submission(settings: Settings, job_id: str) -> None:
    path = history_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*submitted_jobs(settings), job_id]))


def checkpoint_root(settings: Settings) -> Path:
    """execution.checkpointing.dir of the generated Flink config (state/flink/checkpoints by default)."""
    conf = settings.state_path / "flink" / "conf" / "config.yaml"
    if conf.exists():
        uri = (
            (yaml.safe_load(conf.read_text()) or {}).get("execution", {}).get("checkpointing", {}).get("dir")
        )
        if uri:
            return Path(urlparse(uri).path)
    return settings.state_path / "flink" / "checkpoints"


def latest_checkpoint(settings: Settings) -> Path | None:
    """Newest completed checkpoint (chk-N with _metadata) of a job this pipeline submitted."""
    root = checkpoint_root(settings)
    completed = [
        meta.parent for job_id in submitted_jobs(settings) for meta in (root / job_id).glob("chk-*/_metadata")
    ]
    return max(completed, key=lambda chk: chk.stat().st_mtime, default=None)
