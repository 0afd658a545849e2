"""python -m services.storage: the ClickHouse consumers and the storage query API in one process."""

from __future__ import annotations

from services.storage.api import create_app
from shared.http_server import serve

if __name__ == "__main__":
    serve(create_app, lambda settings: settings.storage)
