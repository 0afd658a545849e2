"""python -m services.ingestion: the ingestion API under uvicorn on RTAP_INGESTION__HOST/PORT.

One worker by default. With RTAP_INGESTION__WORKERS > 1, uvicorn runs that many worker processes
and Prometheus multiprocess mode gives /metrics one process-wide view.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal

import uvicorn

from shared.http_server import uvicorn_options
from shared.logging import configure_logging
from shared.settings import Settings


def multiprocess_metrics_dir(settings: Settings) -> str:
    path = settings.state_path / "ingestion-metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


def main() -> None:
    faulthandler.register(signal.SIGUSR1)
    settings = Settings()
    configure_logging(settings.log_level, json=settings.env == "production")
    options = {**uvicorn_options(settings, settings.ingestion), "loop": "uvloop"}
    if settings.ingestion.workers > 1:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_metrics_dir(settings)
        uvicorn.run(
            "services.ingestion.app:create_app", factory=True, workers=settings.ingestion.workers, **options
        )
        return
    from services.ingestion.app import create_app

    uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    main()
