"""`rtap load`: realistic traffic into the ingestion API, with progress and a manifest for reconciliation."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.loadgen.sender import LoadConfig, run_load
from services.loadgen.sender import Progress as WorkerProgress
from shared.settings import Settings, stack_settings

console = Console()
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}  # a --url naming one of these needs no --allow-remote


def check_target(url: str, allow_remote: bool) -> None:
    host = urlsplit(url).hostname
    if host is None:
        raise typer.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--url")
    if host not in LOOPBACK_NAMES and not allow_remote:
        raise typer.BadParameter(
            f"{host} is not this machine; pass --allow-remote to load it", param_hint="--url"
        )


def total_events(events: int | None, duration: float | None, rate: float) -> int:
    if events is not None:
        return events
    if duration is None or rate <= 0:
        raise typer.BadParameter(
            "give --events N, or --duration S with a --rate above 0", param_hint="--events/--duration"
        )
    return max(1, int(duration * rate))


def default_manifest(settings: Settings) -> Path:
    folder = settings.state_path / "loadgen"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"manifest-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"


def summary_table(summary: dict[str, int], seconds: float) -> Table:
    table = Table(title="rtap load")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        table.add_row(name, str(value))
    table.add_row("seconds", f"{seconds:.1f}")
    table.add_row("accepted events/s", f"{summary['accepted'] / max(seconds, 1e-9):,.0f}")
    return table


def register(app: typer.Typer) -> None:
    @app.command("load")
    def load(
        rate: Annotated[
            float,
            typer.Option(
                min=0,
                help=(
                    "events per second in total (0 = as fast as possible, up to 10,000 per process: "
                    "no event is posted before its timestamp)"
                ),
            ),
        ] = 1_000,
        duration: Annotated[
            float | None, typer.Option(min=0, help="seconds of traffic (events = rate x duration)")
        ] = None,
        events: Annotated[
            int | None, typer.Option(min=1, help="number of distinct events (overrides --duration)")
        ] = None,
        processes: Annotated[int, typer.Option(min=1, max=64, help="sender processes")] = 1,
        batch_size: Annotated[int, typer.Option(min=1, help="events per POST /v1/analytics/batch")] = 500,
        out_of_order_ms: Annotated[
            int, typer.Option(min=0, help="move timestamps back by up to this much (shuffles order)")
        ] = 0,
        late_fraction: Annotated[float, typer.Option(min=0, max=1, help="share of events sent late")] = 0.0,
        late_ms: Annotated[int, typer.Option(min=0, help="how far back a late event's timestamp is")] = 0,
        duplicate_fraction: Annotated[
            float, typer.Option(min=0, max=1, help="share of extra sends repeating an already-sent event id")
        ] = 0.0,
        seed: Annotated[int | None, typer.Option(help="random seed (same seed, same events and ids)")] = None,
        url: Annotated[str | None, typer.Option(help="ingestion URL (default: settings.ingestion)")] = None,
        write_key: Annotated[
            str | None, typer.Option(envvar="RTAP_WRITE_KEY", help="write key (default: first configured)")
        ] = None,
        manifest: Annotated[
            Path | None, typer.Option(help="manifest file (JSON lines; default in the state dir)")
        ] = None,
        max_seconds: Annotated[float, typer.Option(min=1, help="hard stop for sending")] = 3_600,
        retries: Annotated[
            int, typer.Option(min=0, help="re-posts of events the server could not write (503)")
        ] = 2,
        allow_remote: Annotated[bool, typer.Option(help="allow a --url that is not this machine")] = False,
    ) -> None:
        """Send realistic shop sessions (page/product views, clicks, carts, purchases); write a manifest."""
        settings = stack_settings()
        target = url or settings.ingestion.url
        check_target(target, allow_remote)
        if batch_size > settings.ingestion.max_batch_events:
            raise typer.BadParameter(
                f"above the ingestion limit {settings.ingestion.max_batch_events}", param_hint="--batch-size"
            )
        config = LoadConfig(
            url=target,
            events=total_events(events, duration, rate),
            rate=rate,
            processes=processes,
            batch_size=batch_size,
            seed=seed if seed is not None else random.SystemRandom().randrange(2**31),
            manifest=manifest or default_manifest(settings),
            write_key=write_key or next(iter(settings.ingestion.write_keys), None),
            duplicate_fraction=duplicate_fraction,
            out_of_order_ms=out_of_order_ms,
            late_fraction=late_fraction,
            late_ms=late_ms,
            deadline_s=max_seconds,
            retries=retries,
        )
        console.print(
            f"sending {config.events:,} events to {target} from {processes} process(es), seed {config.seed}"
        )
        started = time.monotonic()
        try:
            summary = run_with_progress(config, started)
        except RuntimeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        console.print(summary_table(summary, time.monotonic() - started))
        console.print(f"manifest: {config.manifest}")
        if summary["not_accepted"]:
            console.print(
                f"[yellow]{summary['not_accepted']} events were not accepted "
                "(listed in the manifest)[/yellow]"
            )


def run_with_progress(config: LoadConfig, started: float) -> dict[str, int]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn(
            "sent {task.fields[sends]:,} accepted {task.fields[accepted]:,} "
            "rejected {task.fields[rejected]:,} {task.fields[rate]:,.0f}/s"
        ),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("load", total=config.events, sends=0, accepted=0, rejected=0, rate=0.0)

        def update(latest: dict[int, WorkerProgress]) -> None:
            accepted = sum(p.accepted for p in latest.values())
            rejected = sum(p.not_accepted for p in latest.values())
            bar.update(
                task,
                completed=accepted + rejected,
                sends=sum(p.sends for p in latest.values()),
                accepted=accepted,
                rejected=rejected,
                rate=accepted / max(time.monotonic() - started, 1e-9),
            )

        return run_load(config, update)
