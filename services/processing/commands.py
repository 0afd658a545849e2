"""`rtap backfill --from T1 --to T2`: recompute a time range's metrics: same jobs, bounded, same keys."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.processing.backfill import bounds_for
from services.processing.supervisor import submit_job
from shared.settings import Settings

console = Console()
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


def register(app: typer.Typer) -> None:
    @app.command("backfill")
    def backfill(
        start: Annotated[str, typer.Option("--from", help="range start: epoch ms or ISO time (UTC default)")],
        end: Annotated[str, typer.Option("--to", help="range end, exclusive: epoch ms or ISO time")],
        timeout: Annotated[float, typer.Option(help="seconds to wait for the bounded job")] = 1800.0,
    ) -> None:
        """Recompute metrics of [--from, --to) from retained Kafka events (same jobs, bounded, same keys)."""
        settings = Settings()
        start_ms, end_ms = parse_time(start, "--from"), parse_time(end, "--to")
        try:
            bounds = bounds_for(settings, start_ms, end_ms)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--to") from None
        console.print(
            f"backfilling windows [{bounds.start_ms}, {bounds.end_ms}) from Kafka records "
            f"[{bounds.read_from_ms}, {bounds.read_to_ms}) ..."
        )
        with console.status("submitting the bounded job"):
            job_id = submit_job(extra_args=["--from", str(start_ms), "--to", str(end_ms)])
        state = wait_for_job(settings, job_id, timeout)
        if state != "FINISHED":
            console.print(f"[red]backfill job {job_id} ended {state}[/red]")
            raise typer.Exit(1)
        console.print(f"[green]backfill done[/green]: job {job_id} FINISHED")
