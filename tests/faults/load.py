"""The load every kill -9 scenario runs under: steady, with client retries and duplicate sends."""

from __future__ import annotations

import subprocess
from pathlib import Path

from shared.settings import Settings
from tests.e2e.stack import rtap_load

RATE = 400  # events/s, steady, for LOAD_SECONDS
LOAD_SECONDS = 20
KILL_AFTER_EVENTS = 2_000  # accepted by ingestion before the kill: the load is really flowing
RETRIES = 90  # a sender keeps re-sending a refused event through any outage of the scenarios
DUPLICATE_FRACTION = 0.02


def start_load(s: Settings, manifest: Path) -> subprocess.Popen:
    """`rtap load` of RATE x LOAD_SECONDS events in the background, its manifest written to `manifest`."""
    return rtap_load(
        s,
        manifest,
        "--events",
        str(RATE * LOAD_SECONDS),
        "--rate",
        str(RATE),
        "--retries",
        str(RETRIES),
        "--duplicate-fraction",
        str(DUPLICATE_FRACTION),
        wait=False,
    )


def finish_load(load: subprocess.Popen) -> str:
    """Wait for the load to end; its output."""
    output, _ = load.communicate(timeout=LOAD_SECONDS + 240)
    return str(output)
