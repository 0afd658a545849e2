"""Resolve Maven artifacts into a cache under the state directory (mvn dependency:copy-dependencies)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from infrastructure.local.errors import RuntimeSetupError

POM_DIR = Path(__file__).parent / "maven"


def resolve(bundle: str, jar_root: Path, pom_dir: Path = POM_DIR) -> Path:
    """Return the folder holding every jar of `bundle` (a pom under maven/), resolving it if needed."""
    pom = pom_dir / f"{bundle}.xml"
    target = jar_root / bundle
    stamp = target / ".pom-sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and any(target.glob("*.jar")):
        return target
    if not shutil.which("mvn"):
        raise RuntimeSetupError("Maven (mvn) is required to resolve the Kafka and Flink jars, and is not on PATH")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={target}", "-DincludeScope=runtime"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        lines = [l for l in (result.stdout + result.stderr).splitlines() if "ERROR" in l] or ["(no output)"]
        raise RuntimeSetupError(f"Maven could not resolve the {bundle} jars: {lines[0].strip()[:300]}")
    stamp.write_text(digest)
    return target


def find_jar(folder: Path, prefix: str) -> Path:
    matches = sorted(folder.glob(f"{prefix}*.jar"))
    if not matches:
        raise RuntimeSetupError(f"no {prefix}*.jar in {folder}; run `rtap setup`")
    return matches[0]
