"""Build the statement set and submit it: to the session cluster over REST (local runtime, backfill),
or inside `flink run -py` (Compose), where the CLI already chose the cluster.

`python -m services.processing.driver [--savepoint DIR] [--from MS --to MS]` prints one JSON line
{"job_id": ...} and exits; the job keeps running on the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.processing.coordinator import Bounds, JobCoordinator
from shared.settings import Settings


def pipeline_jars(settings: Settings) -> str:
    """The jars the local runtime listed in settings.pipeline_jars_file (the Kafka connector, the project's
    Java functions), as Flink's `pipeline.jars` value; RuntimeError when they were never prepared."""
    listed = settings.pipeline_jars_file
    if not listed.exists():
        raise RuntimeError(f"{listed} does not exist: run `rtap setup` (or start the local Flink cluster)")
    return ";".join(Path(jar).as_uri() for jar in json.loads(listed.read_text()))


def remote_config(settings: Settings, savepoint: str | None) -> dict[str, str]:
    config = {
        "execution.target": "remote",
        "rest.address": settings.flink.rest_host,
        "rest.port": str(settings.flink.rest_port),
        "pipeline.jars": pipeline_jars(settings),
    }
    if savepoint:
        config["execution.savepoint.path"] = savepoint
        config["execution.savepoint.ignore-unclaimed-state"] = "true"
    return config


def table_env(config: dict[str, str]) -> Any:
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = Configuration()
    for key, value in config.items():
        conf.set_string(key, value)
    return TableEnvironment.create(
        EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    )


def submit(settings: Settings, savepoint: str | None = None, bounds: Bounds | None = None) -> str:
    """Submit the jobs to the session cluster; return the Flink job id."""
    t_env = table_env(remote_config(settings, savepoint))
    result = JobCoordinator(settings, bounds).run(t_env)
    return str(result.get_job_client().get_job_id())


def run_inside_flink_cli(settings: Settings) -> None:
    """`flink run -py` entry: the CLI's environment already targets the cluster (and -s for a savepoint)."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    JobCoordinator(settings).run(t_env)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.processing.driver")
    parser.add_argument("--savepoint", help="checkpoint or savepoint directory to resume from")
    parser.add_argument(
        "--from", dest="start_ms", type=int, help="backfill: event-time range start, epoch ms"
    )
    parser.add_argument(
        "--to", dest="end_ms", type=int, help="backfill: event-time range end (exclusive), epoch ms"
    )
    parser.add_argument(
        "--events-topic", help="backfill: read this topic whole instead of the events topic's range"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    bounds = None
    if args.start_ms is not None and args.end_ms is not None:
        from services.processing.backfill import bounds_for

        bounds = replace(bounds_for(settings, args.start_ms, args.end_ms), events_topic=args.events_topic)
    job_id = submit(settings, args.savepoint, bounds)
    print(json.dumps({"job_id": job_id}), flush=True)


if __name__ == "__main__":
    main()
