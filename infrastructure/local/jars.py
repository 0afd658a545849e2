"""Maven jars in a cache under the state directory: resolved artifacts (mvn dependency:copy-dependencies) and
the project's own Java module (mvn package), each rebuilt only when its inputs change."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from infrastructure.local.errors import RuntimeSetupError
from shared.settings import Settings

POM_DIR = Path(__file__).parent / "maven"
UDF_MODULE = Path(__file__).resolve().parents[2] / "services" / "processing" / "udf"
UDF_JAR = "rtap-udf.jar"


def resolve(bundle: str, jar_root: Path, pom_dir: Path = POM_DIR) -> Path:
    """Return the folder holding every jar of `bundle` (a pom under maven/), resolving it if needed."""
    pom = pom_dir / f"{bundle}.xml"
    target = jar_root / bundle
    stamp = target / ".pom-sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and any(target.glob("*.jar")):
        return target
    fresh_folder(target)
    maven(
        [
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={target}",
            "-DincludeScope=runtime",
        ],
        f"resolve the {bundle} jars",
        target,
    )
    stamp.write_text(digest)
    return target


def build_udf(jar_root: Path, module: Path = UDF_MODULE) -> Path:
    """Return the project's Java function jar (services/processing/udf), building it when its sources
    changed."""
    target = jar_root / "udf"
    jar, stamp = target / UDF_JAR, target / ".sources-sha256"
    digest = hashlib.sha256()
    for path in sorted(
        p for p in module.rglob("*") if p.is_file() and "target" not in p.relative_to(module).parts
    ):
        digest.update(str(path.relative_to(module)).encode() + b"\0" + path.read_bytes())
    if stamp.exists() and stamp.read_text() == digest.hexdigest() and jar.exists():
        return jar
    fresh_folder(target)
    maven(
        ["-f", str(module / "pom.xml"), "package", "-DskipTests", f"-Dudf.build.dir={target / 'build'}"],
        "build the Java functions",
        target,
    )
    shutil.move(target / "build" / UDF_JAR, jar)
    shutil.rmtree(target / "build")
    stamp.write_text(digest.hexdigest())
    return jar


def prepare_pipeline_jars(settings: Settings) -> list[Path]:
    """Resolve the Kafka connector and build the Java functions; list both in settings.pipeline_jars_file,
    where the processing driver finds what each job ships."""
    root = settings.state_path / "jars"
    connector = find_jar(resolve("flink", root), "flink-sql-connector-kafka")
    listed = [connector.resolve(), build_udf(root).resolve()]
    settings.pipeline_jars_file.write_text(json.dumps([str(path) for path in listed]))
    return listed


def fresh_folder(target: Path) -> None:
    if not shutil.which("mvn"):
        raise RuntimeSetupError(
            "Maven (mvn) is required to resolve the Kafka and Flink jars and to build the Java functions, "
            "and is not on PATH"
        )
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)


def maven(args: list[str], what: str, target: Path) -> None:
    result = subprocess.run(["mvn", "-q", "-B", *args], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        output = (result.stdout + result.stderr).splitlines()
        lines = [line for line in output if "ERROR" in line] or ["(no output)"]
        raise RuntimeSetupError(f"Maven could not {what}: {lines[0].strip()[:300]}")


def find_jar(folder: Path, prefix: str) -> Path:
    matches = sorted(folder.glob(f"{prefix}*.jar"))
    if not matches:
        raise RuntimeSetupError(f"no {prefix}*.jar in {folder}; run `rtap setup`")
    return matches[0]
