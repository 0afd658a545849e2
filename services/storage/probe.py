"""`python -m services.storage.probe`: one line about the configured ClickHouse; exits non-zero when it is
unusable.

The local runtime runs it (as a process) to check ClickHouse while the storage service, which owns an embedded
chDB path, is not running."""

import sys

from services.storage.backends import open_backend
from shared.settings import Settings


def main() -> int:
    settings = Settings()
    try:
        backend = open_backend(settings)
        backend.command(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse.database}")
        version = backend.query("SELECT version() AS v")[0]["v"]
        backend.close()
    except Exception as exc:  # any failure is reported as the probe's one line
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1
    print(f"{settings.clickhouse.url and 'server' or 'chdb'} {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
