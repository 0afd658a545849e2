"""python -m services.cache: the cache consumer and the cache API in one process."""

from __future__ import annotations

import uvicorn

from services.cache.api import create_app
from shared.logging import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, json=settings.env == "production")
    app = create_app(settings)
    # Open SSE streams never end by themselves: give them a bounded grace period on shutdown.
    uvicorn.run(app, host=settings.cache.host, port=settings.cache.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
