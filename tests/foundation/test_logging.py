"""Log lines go to stderr (stdout stays for a command's output) and name the module that wrote them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
from shared.logging import configure_logging, get_logger
log = get_logger("retry")  # at import time, before configure_logging, as modules do
configure_logging("INFO", json=True)
log.warning("write failed", attempt=2)
log.debug("below the level")
print("command output")
"""


def test_a_line_goes_to_stderr_with_its_module_and_level():
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert run.stdout == "command output\n"
    lines = [orjson.loads(line) for line in run.stderr.splitlines()]
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("event", "module", "level", "attempt")} == {
        "event": "write failed",
        "module": "retry",
        "level": "warning",
        "attempt": 2,
    }
