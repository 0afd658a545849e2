"""Reading the Compose deployment as data: the file, its services, its variables and Dockerfiles."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "infrastructure" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")


def load() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return load()["services"]


def variables() -> list[re.Match]:
    """Every ${...} the Compose file interpolates ($$ is a literal dollar for the container's shell)."""
    return list(VARIABLE.finditer(COMPOSE_FILE.read_text().replace("$$", "")))


def example_env() -> dict[str, str]:
    lines = [
        line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    return dict(line.split("=", 1) for line in lines)


def interpolate(value: str, env: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: env[m.group("name")], value.replace("$$", "$"))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def repo_path(context_relative: str) -> Path:
    return (COMPOSE_DIR / context_relative).resolve()


def dockerfile_copies(dockerfile: Path) -> list[str]:
    """Sources of COPY lines that read the build context (not another stage)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources
