"""The layer rule: imports only point down (docs/architecture.md, Layers).

    infrastructure/   the CLI, Compose's admin step, bench: may import everything below
          |           (infrastructure/local, the local runtime, starts services as processes and imports
          |            none of their modules, except where CROSSINGS says why)
    services/<name>/  one service: imports its own package and shared, another service only where
          |           CROSSINGS names the pair and says why
    shared/           imports nothing of the project but shared

An import is any `import`/`from` statement, at module level or inside a function, and any string
constant that names a project module (what `importlib.import_module` or `uvicorn.run` would load),
except the module of a `-m` argument: starting a process is not importing its code.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("shared", "services", "infrastructure")
MODULE_NAME = re.compile(r"^(?:shared|services|infrastructure)(?:\.\w+)+(?::\w+)?$")

# (importing package, imported module): why the crossing is part of the design. The job registry is the one
# module of processing others read: it imports no PyFlink (test_storage_and_cache_start_without_pyflink).
CROSSINGS = {
    ("services.storage", "services.processing.registry"): "ClickHouse tables derive from the job schemas",
    ("services.cache", "services.processing.registry"): "the Redis layout derives from the job schemas",
    ("infrastructure.local", "services.processing.registry"): "the local runtime creates every job's topic",
}


# What other services may load of processing: the registry, BaseJob and the job modules.
PYFLINK_FREE = ("services.processing.registry", "services.processing.job", "services.processing.jobs")


class Import(NamedTuple):
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    line: int


def project_modules() -> Iterator[tuple[str, Path]]:
    for layer in LAYERS:
        for path in sorted((REPO_ROOT / layer).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every project module `module` imports: statements anywhere in it, and strings naming a module."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    started = process_modules(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (Import(module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield Import(module, absolute(module, is_package, node), node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and MODULE_NAME.match(node.value)
            and id(node) not in started
        ):
            yield Import(module, node.value.split(":")[0], node.lineno)


def process_modules(tree: ast.AST) -> set[int]:
    """The string nodes that follow a "-m" in a list or tuple: modules started as processes."""
    started = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            for flag, value in zip(node.elts, node.elts[1:], strict=False):
                if isinstance(flag, ast.Constant) and flag.value == "-m":
                    started.add(id(value))
    return started


def absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def violation(imp: Import) -> str | None:
    """Why `imp` points up or sideways; None when it points down or stays inside its own package."""
    source, target = imp.source.split("."), imp.target.split(".")
    if target[0] not in LAYERS:
        return None
    if source[0] == "shared" and target[0] != "shared":
        return "shared imports only shared"
    if source[0] == "services" and target[0] == "infrastructure":
        return "services do not import infrastructure (local tooling, the CLI)"
    if crossing(imp):
        return None
    if source[0] == "services" and target[0] == "services" and target[1:2] != source[1:2]:
        return f"services.{source[1]} reaches into another service"
    if source[:2] == ["infrastructure", "local"] and target[0] == "services":
        return "the local runtime starts services as processes and imports none of their modules"
    return None


def crossing(imp: Import) -> bool:
    return any(
        is_within(imp.source, source) and is_within(imp.target, target) for source, target in CROSSINGS
    )


def is_within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def all_violations() -> list[str]:
    found = []
    for module, path in project_modules():
        for imp in imports_of(module, path):
            reason = violation(imp)
            if reason:
                found.append(f"{path.relative_to(REPO_ROOT)}:{imp.line} imports {imp.target}: {reason}")
    return found


def test_imports_only_point_down():
    found = all_violations()
    assert not found, "imports that point up or sideways:\n" + "\n".join(found)


def test_the_rule_catches_each_kind_of_upward_import():
    cases = {
        Import("shared.topics", "services.processing.jobs", 1): "shared imports only shared",
        Import("shared.metric_schema", "infrastructure.local.jars", 1): "shared imports only shared",
        Import("services.processing.driver", "infrastructure.local.jars", 1): "services do not import",
        Import("services.storage.api", "services.processing.coordinator", 1): "reaches into another service",
        Import("infrastructure.local.probe", "services.storage.backends", 1): "the local runtime starts",
    }
    for imp, reason in cases.items():
        assert reason in (violation(imp) or ""), imp
    assert violation(Import("services.storage.api", "services.processing.registry", 1)) is None
    assert violation(Import("infrastructure.cli", "services.storage.commands", 1)) is None
    assert violation(Import("services.storage.api", "services.storage.tables", 1)) is None
    assert violation(Import("services.loadgen.reconcile", "services.processing.registry", 1)) is not None


def test_a_module_named_in_a_string_counts_as_an_import(tmp_path):
    module = tmp_path / "metric_schema.py"
    module.write_text(
        'import importlib\nPACKAGE = "services.processing.jobs"\nimportlib.import_module(PACKAGE)\n'
    )
    found = [violation(imp) for imp in imports_of("shared.metric_schema", module)]
    assert "shared imports only shared" in found


def test_a_module_started_as_a_process_is_not_an_import(tmp_path):
    module = tmp_path / "components.py"
    module.write_text(
        'import sys\nprobe = [sys.executable, "-m", "services.storage.probe"]\n'
        'uvicorn_target = "services.storage.api:app"\n'
    )
    found = [imp.target for imp in imports_of("infrastructure.local.components", module)]
    assert found == ["sys", "services.storage.api"]


def test_every_crossing_names_modules_that_exist():
    modules = {name for name, _ in project_modules()}
    assert all({source, target} <= modules for source, target in CROSSINGS), CROSSINGS


def test_storage_and_cache_start_without_pyflink():
    """Storage and cache read job schemas through the registry; their import path loads neither PyFlink nor
    processing's Flink side (coordinator, driver, supervisor)."""
    probe = (
        "import sys, services.storage.api, services.storage.consumer\n"
        "import services.cache.api, services.cache.consumer\n"
        "from services.processing.registry import load_schemas\n"
        "assert load_schemas(), 'no job schemas'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyflink', 'py4j')\n"
        "             or m.startswith('services.processing.') and not m.startswith(PYFLINK_FREE)))"
    )
    probe = probe.replace("PYFLINK_FREE", repr(PYFLINK_FREE))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
