"""`rtap backfill --from T1 --to T2 [--source auto|kafka|raw]`: recompute a time range's metrics: same jobs,
bounded, same keys; from Kafka's retained records, or from the raw table for older ranges."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.processing.backfill import bounds_for, choose_source, iso, kafka_extent
from services.processing.coordinator import Bounds
from services.processing.raw_replay import ExportError, ExportRange, drop_topic, replay_from_raw, replay_topic
from services.processing.supervisor import FlinkRest, submit_job
from shared.settings import Settings, settings_env, stack_settings
from shared.topics import Topic

console = Console()


class SourceChoice(StrEnum):
    auto = "auto"
    kafka = "kafka"
    raw = "raw"


END_STATES = {"FINISHED", "FAILED", "CANCELED"}


def parse_time(value: str, option: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC when no offset is given)."""
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither epoch ms nor an ISO 8601 time", param_hint=option
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def job_progress(settings: Settings, job_id: str) -> tuple[str, Table]:
    detail = httpx.get(f"{settings.flink.rest_url}/jobs/{job_id}", timeout=5).json()
    table = Table(title=f"backfill job {job_id}: {detail['state']}")
    for column in ("operator", "status", "records in", "records out"):
        table.add_column(column)
    for v in detail["vertices"]:
        m = v.get("metrics", {})
        table.add_row(
            v["name"][:70], v["status"], str(m.get("read-records", 0)), str(m.get("write-records", 0))
        )
    return detail["state"], table


def wait_for_job(settings: Settings, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "SUBMITTED"
    with Live(console=console, refresh_per_second=2) as live:
        while state not in END_STATES and time.monotonic() < deadline:
            state, table = job_progress(settings, job_id)
            live.update(table)
            time.sleep(1)
    return state


def run_bounded_job(
    settings: Settings, start_ms: int, end_ms: int, timeout: float, *extra: str, cancel_late: bool = False
) -> str:
    """Submit the bounded jobs (the driver process gets these settings) and follow them to their end; return
    the job id (Exit(1) unless FINISHED).
    cancel_late: cancel a job still running at the timeout (its input is about to go)."""
    with console.status("submitting the bounded job"):
        job_id = submit_job(
            extra_args=["--from", str(start_ms), "--to", str(end_ms), *extra],
            env={**os.environ, **settings_env(settings)},
        )
    state = wait_for_job(settings, job_id, timeout)
    if cancel_late and state not in END_STATES:
        FlinkRest(settings).cancel(job_id)
    if state != "FINISHED":
        console.print(
            f"[red]backfill job {job_id} ended {state}[/red]"
            if state in END_STATES
            else f"[red]backfill job {job_id} still {state} after {timeout:.0f}s[/red]"
        )
        raise typer.Exit(1)
    return job_id


def replay_raw(settings: Settings, bounds: Bounds, read_key: str | None) -> Topic:
    """Export the range's raw events into a fresh topic, showing rows and event time reached; the topic."""
    topic = replay_topic(settings)
    span = ExportRange.of(bounds)
    console.print(
        f"exporting events with event times [{iso(span.start_ms)}, {iso(span.end_ms)}) from the raw table "
        f"into topic {topic.name} ..."
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]} events"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("event time", total=span.end_ms - span.start_ms, rows=0)

        def progress(rows: int, reached: int) -> None:
            bar.update(task, completed=max(0, reached - span.start_ms), rows=rows)

        try:
            rows = replay_from_raw(settings, bounds, topic, read_key, progress)
        except Exception:
            drop_topic(settings, topic)
            raise
        bar.update(task, completed=span.end_ms - span.start_ms, rows=rows)
    console.print(f"exported {rows} events")
    return topic


def register(app: typer.Typer) -> None:
    @app.command("backfill")
    def backfill(
        start: Annotated[str, typer.Option("--from", help="range start: epoch ms or ISO time (UTC default)")],
        end: Annotated[str, typer.Option("--to", help="range end, exclusive: epoch ms or ISO time")],
        timeout: Annotated[float, typer.Option(help="seconds to wait for the bounded job")] = 1800.0,
        source: Annotated[
            SourceChoice,
            typer.Option(
                help="where the events come from: kafka (retained records), raw (the raw ClickHouse table, "
                "through the storage API), auto (kafka when it still holds the whole read range)"
            ),
        ] = SourceChoice.auto,
        key: Annotated[
            str | None,
            typer.Option(
                "--read-key",
                envvar="RTAP_READ_KEY",
                help="storage read key for --source raw (default: first of RTAP_STORAGE__READ_KEYS)",
            ),
        ] = None,
    ) -> None:
        """Recompute metrics of [--from, --to) with the same jobs (bounded, same keys), from the events Kafka
        still holds or, for older ranges, from the raw table."""
        settings = stack_settings()
        start_ms, end_ms = parse_time(start, "--from"), parse_time(end, "--to")
        try:
            bounds = bounds_for(settings, start_ms, end_ms)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--to") from None
        extent = kafka_extent(settings)
        chosen = choose_source(source.value, bounds, extent)
        console.print(f"{extent.describe()}; reading from [bold]{chosen}[/bold]")
        if chosen == "kafka":
            if not extent.holds(bounds):
                console.print(
                    f"[yellow]Kafka no longer holds records before {iso(extent.oldest_ms or 0)}; the range "
                    f"reads from {iso(bounds.read_from_ms)}: events before are missed "
                    "(--source raw reads them)"
                    "[/yellow]"
                )
            console.print(
                f"backfilling windows [{bounds.start_ms}, {bounds.end_ms}) from Kafka records "
                f"[{bounds.read_from_ms}, {bounds.read_to_ms}) ..."
            )
            job_id = run_bounded_job(settings, start_ms, end_ms, timeout)
        else:
            read_key = key or (settings.storage.read_keys[0] if settings.storage.read_keys else None)
            try:
                topic = replay_raw(settings, bounds, read_key)
            except ExportError as exc:
                console.print(f"[red]cannot read the range from the raw table[/red]: {escape(str(exc))}")
                console.print(f"({extent.describe()}; the range reads from {iso(bounds.read_from_ms)})")
                raise typer.Exit(1) from None
            try:
                job_id = run_bounded_job(
                    settings, start_ms, end_ms, timeout, "--events-topic", topic.name, cancel_late=True
                )
            finally:
                drop_topic(settings, topic)
        console.print(f"[green]backfill done[/green]: job {job_id} FINISHED")
