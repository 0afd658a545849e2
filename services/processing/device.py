"""Device category: `device_category(user_agent, screen_width, screen_height)` in the jobs' SQL, a Java scalar
function (services/processing/udf, rtap.udf.DeviceCategory) that runs in Flink's JVM, not a Python function.

Order matters: bots first (Googlebot's smartphone agent also says "Android ... Mobile"), then tablets (iPad,
Android without "Mobile", Kindle/Silk, tablet words and models, or a phone agent on a screen whose short side
is at least the tablet minimum in CSS px), then phones, then desktop. An empty agent falls back to the screen
size alone. The markers live in one file, device-rules.tsv, read by the Java function and by `load_rules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

FUNCTION = "device_category"
FUNCTION_CLASS = "rtap.udf.DeviceCategory"
RULES_FILE = (
    Path(__file__).parent / "udf" / "src" / "main" / "resources" / "rtap" / "udf" / "device-rules.tsv"
)


def function_ddl() -> str:
    return f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS {FUNCTION} AS '{FUNCTION_CLASS}' LANGUAGE JAVA"


def device_category_sql(user_agent: str, screen_width: str, screen_height: str) -> str:
    return f"{FUNCTION}({user_agent}, {screen_width}, {screen_height})"


@dataclass(frozen=True)
class Rules:
    bot: tuple[str, ...]
    tablet: tuple[str, ...]
    tablet_models: tuple[tuple[str, str], ...]  # (marker, regex tried only when the marker is present)
    phone: tuple[str, ...]
    tablet_min_side: int


@cache
def load_rules(path: Path = RULES_FILE) -> Rules:
    kinds: dict[str, list[Any]] = {
        "bot": [],
        "tablet": [],
        "tablet-model": [],
        "phone": [],
        "tablet-min-side": [],
    }
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            kind, *values = line.split("\t")
            kinds[kind].append(values[0] if len(values) == 1 else tuple(values))
    return Rules(
        tuple(kinds["bot"]),
        tuple(kinds["tablet"]),
        tuple(kinds["tablet-model"]),
        tuple(kinds["phone"]),
        int(kinds["tablet-min-side"][0]),
    )
