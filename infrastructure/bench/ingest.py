"""Single-event and batch ingest: benchmarks/ingestion.py in its own process (it starts a private Kafka
broker and the ingestion service, and stops them), results read back from its --json file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from infrastructure.local.components import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "ingestion.py"
START_UP_S = 180  # broker and service start-up, warm-up, shutdown
# One run of each phase: the bench measures the whole stack; the script's median of several runs is for
# docs/benchmarks.md.
REPEATS = 1


def run_ingest(duration: float, out_dir: Path) -> list[dict[str, Any]]:
    """The phase results (name, requests_per_s, events_per_s, server_cpu_cores, events_per_server_cpu_second,
    p50_ms, p99_ms), loaded by the script's default client (wrk); its output goes to out_dir/ingestion.log."""
    result_file, log_file = out_dir / "ingestion.json", out_dir / "ingestion.log"
    result_file.unlink(missing_ok=True)
    argv = [sys.executable, str(SCRIPT), "--duration", str(duration), "--repeats", str(REPEATS)]
    argv += ["--json", str(result_file)]
    timeout = 2 * REPEATS * duration + START_UP_S
    with log_file.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"benchmarks/ingestion.py did not finish in {timeout:.0f}s; log: {log_file}"
            ) from None
        finally:
            interrupt(proc)
    if code != 0 or not result_file.exists():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"benchmarks/ingestion.py failed (exit {code}): {' | '.join(tail)}")
    phases: list[dict[str, Any]] = orjson.loads(result_file.read_bytes())["phases"]
    return phases


def interrupt(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT a child that is still running (as Ctrl-C: its finally blocks stop what it started), then
    kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
