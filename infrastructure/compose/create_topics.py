"""Compose's one-shot admin step: create every declared topic (settings from RTAP_* variables), then exit."""

from __future__ import annotations

from tenacity import retry, stop_after_delay, wait_fixed

from services.processing.registry import load_schemas
from shared.kafka_admin import ensure_topics
from shared.settings import Settings
from shared.topics import topics


@retry(stop=stop_after_delay(120), wait=wait_fixed(2), reraise=True)
def main() -> None:
    settings = Settings()
    declared = topics(settings).all(load_schemas(settings.processing.job_modules).values())
    created = ensure_topics(settings.kafka.bootstrap, declared)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")


if __name__ == "__main__":
    main()
