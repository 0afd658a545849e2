"""`python -m services.processing`: the supervisor keeping the Flink job running, with /healthz and /metrics.

Run by `flink run -py services/processing/__main__.py` (Compose) it instead builds and submits the
jobs inside the Flink CLI, which is recognisable by the gateway port the CLI hands to Python.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # executed as a file by `flink run -py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared.logging import configure_logging
from shared.settings import Settings

if TYPE_CHECKING:
    from services.processing.supervisor import Supervisor


def metrics_registry(supervisor: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry()
    running = Gauge("rtap_processing_job_running", "1 while the Flink job is RUNNING", registry=registry)
    running.set_function(lambda: 1.0 if supervisor.status.state == "RUNNING" else 0.0)
    submissions = Gauge(
        "rtap_processing_job_submissions", "job submissions by this supervisor", registry=registry
    )
    submissions.set_function(lambda: float(supervisor.status.submissions))
    return registry


def http_handler(supervisor: Supervisor, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path == "/healthz":
                status = supervisor.status
                body = json.dumps(
                    {"status": "ok" if status.healthy else "unhealthy", "job": status.__dict__}
                ).encode()
                self._reply(200 if status.healthy else 503, "application/json", body)
            elif self.path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._reply(404, "application/json", b'{"detail": "not found"}')

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def supervise(settings: Settings) -> None:
    from services.processing.supervisor import Supervisor

    supervisor = Supervisor(settings)
    server = ThreadingHTTPServer(
        (settings.processing.host, settings.processing.port),
        http_handler(supervisor, metrics_registry(supervisor)),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    supervisor.run()
    supervisor.stop_job()
    server.shutdown()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    if "PYFLINK_GATEWAY_PORT" in os.environ:
        from services.processing.driver import run_inside_flink_cli

        run_inside_flink_cli(settings)
        return
    supervise(settings)


if __name__ == "__main__":
    main()
