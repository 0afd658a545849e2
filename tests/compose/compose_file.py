"""Reading the Compose deployment as data: the file, its services, its variables and Dockerfiles."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "infrastructure" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
HA_FILE = COMPOSE_DIR / "docker-compose.ha.yml"  # an override of COMPOSE_FILE: the ha profile
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")


def load() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return load()["services"]


class Override(list):
    """A sequence tagged !override: it replaces what it is merged onto instead of adding to it."""


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's !override tag (on sequences, the only use here)."""


ComposeLoader.add_constructor("!override", lambda loader, node: Override(loader.construct_sequence(node)))


def load_ha() -> dict:
    return yaml.load(HA_FILE.read_text(), ComposeLoader)


def plain(value: object) -> object:
    """`value` as plain YAML data (an Override becomes a list), for the JSON schema."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def merge(base: object, local: object, key: str = "") -> object:
    """Compose's merge of a service definition: mappings key by key, sequences added to (volumes by their
    target path), a command, an !override sequence and any other value replacing."""
    if isinstance(local, Override) or key == "command":
        return list(local) if isinstance(local, list) else local
    if isinstance(base, dict) and isinstance(local, dict):
        return {**base, **{k: merge(base.get(k), v, k) for k, v in local.items()}}
    if isinstance(base, list) and isinstance(local, list):
        if key == "volumes":
            return list({str(v).split(":")[1]: v for v in [*base, *local]}.values())
        return base + [v for v in local if v not in base]
    return local


def ha_services() -> dict[str, dict]:
    """The services of COMPOSE_FILE with HA_FILE applied, `extends` resolved as Compose does it: the extended
    service of COMPOSE_FILE without its depends_on (never inherited), then the local definition."""
    base = services()
    merged = dict(base)
    for name, local in load_ha()["services"].items():
        origin = base.get(name, {})
        if "extends" in local:
            assert local["extends"]["file"] == COMPOSE_FILE.name, f"{name} extends another file"
            origin = {k: v for k, v in base[local["extends"]["service"]].items() if k != "depends_on"}
            local = {k: v for k, v in local.items() if k != "extends"}
        merged[name] = merge(origin, local)
    return merged


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
