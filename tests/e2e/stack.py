"""The full local stack for end-to-end and fault tests (infrastructure/bench/stack.py), and `rtap load`."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from infrastructure.bench.stack import (
    INFRASTRUCTURE,
    RTAP,
    SERVICES,
    full_stack,
    load_command,
    stack_env,
    wait_for_flink_job,
)
from services.loadgen.manifest import read_manifest
from shared.settings import Settings

__all__ = [
    "INFRASTRUCTURE",
    "RTAP",
    "SERVICES",
    "full_stack",
    "reconciled_env",
    "rtap_load",
    "wait_for_flink_job",
]


def reconciled_env(window_s: int, gap_s: int, watermark_delay_ms: int) -> dict[str, str]:
    """Settings of a stack whose layers are compared window by window: short windows, frequent checkpoints,
    and a cache that keeps and serves every window."""
    return {
        "RTAP_PROCESSING__WINDOW_SECONDS": str(window_s),
        "RTAP_PROCESSING__SESSION_GAP_SECONDS": str(gap_s),
        "RTAP_PROCESSING__WATERMARK_DELAY_MS": str(watermark_delay_ms),
        "RTAP_PROCESSING__CHECKPOINT_INTERVAL_MS": "2000",
        "RTAP_CACHE__MAX_LIMIT": "50000",
        "RTAP_CACHE__WINDOWS_PER_KEY": "100000",
    }


def rtap_load(s: Settings, manifest: Path, *args: str, wait: bool = True) -> Any:
    """Run `rtap load` against the stack; returns the manifest entries, or the running process when
    wait=False."""
    argv = load_command(
        manifest, "--processes", "2", "--batch-size", "100", "--seed", str(uuid.uuid4().int % 2**31), *args
    )
    if not wait:
        return subprocess.Popen(
            argv, env=stack_env(s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    result = subprocess.run(argv, env=stack_env(s), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_manifest(manifest)
