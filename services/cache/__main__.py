"""python -m services.cache: the cache consumer and the cache API in one process.

Open SSE streams never end by themselves: http.shutdown_grace_seconds bounds them on shutdown."""

from __future__ import annotations

from services.cache.api import create_app
from shared.http_server import serve

if __name__ == "__main__":
    serve(create_app, lambda settings: settings.cache)
