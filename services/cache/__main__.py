"""python -m services.cache: the cache consumer and the cache API in one process."""

from __future__ import annotations

import uvicorn

from services.cache.api import create_app
from shared.http_server import server_options
from shared.logging import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, json=settings.env == "production")
    app = create_app(settings)
    # Open SSE streams never end by themselves: http.shutdown_grace_seconds bounds them on shutdown.
    uvicorn.run(
        app,
        host=settings.cache.host,
        port=settings.cache.port,
        log_level="warning",
        access_log=False,
        **server_options(settings.http),
    )


if __name__ == "__main__":
    main()
