"""python -m services.storage: the ClickHouse consumers and the storage query API in one process."""

from __future__ import annotations

import faulthandler
import signal

import uvicorn

from services.storage.api import create_app
from shared.http_server import server_options
from shared.logging import configure_logging
from shared.settings import Settings


def main() -> None:
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints every thread's stack to the log
    settings = Settings()
    configure_logging(settings.log_level, json=settings.env == "production")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.storage.host,
        port=settings.storage.port,
        log_level="warning",
        access_log=False,
        **server_options(settings.http),
    )


if __name__ == "__main__":
    main()
