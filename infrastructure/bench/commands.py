"""`rtap bench`: ingest benchmark, then a private full stack under `rtap load`: throughput with
reconciliation, freshness, memory; prints tables, writes results.json and bench.png."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infrastructure.bench import report
from infrastructure.bench.run import BenchConfig, run_bench
from infrastructure.local.errors import RuntimeSetupError
from shared.settings import Profile, stack_settings

console = Console()


def raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        rate: Annotated[float, typer.Option(min=1, help="events/s that rtap load sends")] = 5_000,
        duration: Annotated[float, typer.Option(min=1, max=3_600, help="seconds of load")] = 60,
        ingest_duration: Annotated[
            float, typer.Option(min=1, max=120, help="seconds per ingest phase (single, batch)")
        ] = 10,
        skip_ingest: Annotated[bool, typer.Option(help="skip the ingest phases")] = False,
        processes: Annotated[int, typer.Option(min=1, max=16, help="rtap load sender processes")] = 2,
        batch_size: Annotated[
            int, typer.Option(min=1, max=1_000, help="events per batch request of rtap load")
        ] = 500,
        session_gap: Annotated[
            int,
            typer.Option(min=1, help="session gap (s) of the bench stack, so sessions close within the run"),
        ] = 5,
        settle_timeout: Annotated[
            float,
            typer.Option(
                min=10, help="seconds every layer may take to settle after the load (one deadline for all)"
            ),
        ] = 180,
        warmup: Annotated[
            float,
            typer.Option(min=0, max=120, help="seconds of warm-up load before the measured run (0: none)"),
        ] = 10,
        watermark_delay: Annotated[
            int,
            typer.Option(
                min=0,
                max=600_000,
                help=(
                    "bounded out-of-orderness (ms) of the bench stack; "
                    "events later than this are late by policy and fail the reconciliation"
                ),
            ),
        ] = 5_000,
        out: Annotated[Path, typer.Option(help="directory for results.json, bench.png and the logs")] = Path(
            "bench-results"
        ),
        profile: Annotated[
            Profile | None,
            typer.Option(
                help="topology of the bench stack (default: RTAP_PROFILE, else the state directory's "
                "profile, else single)"
            ),
        ] = None,
    ) -> None:
        """Benchmark a private local stack (free ports, temporary state): ingest, end-to-end throughput with
        reconciliation, freshness of cache and ClickHouse, memory of every process."""
        os.environ["RTAP_PROFILE"] = stack_settings(profile).profile  # the bench stack's settings read it
        config = BenchConfig(
            rate=rate,
            duration=duration,
            ingest_duration=ingest_duration,
            skip_ingest=skip_ingest,
            processes=processes,
            batch_size=batch_size,
            session_gap_s=session_gap,
            settle_timeout_s=settle_timeout,
            warmup_s=warmup,
            watermark_delay_ms=watermark_delay,
        )
        signal.signal(signal.SIGTERM, raise_interrupt)  # stop everything on SIGTERM as on Ctrl-C
        started = time.monotonic()

        def step(message: str) -> None:
            console.print(f"[dim]{time.monotonic() - started:6.0f}s[/dim] {message}")

        def tick(elapsed: float, now_rate: float, accepted: float) -> None:
            if int(elapsed) % 5 == 0:
                step(
                    f"  load {elapsed:4.0f}/{duration:g}s  accepted {accepted:,.0f}"
                    f"  now {now_rate:,.0f} events/s"
                )

        try:
            results = run_bench(config, out, step, tick)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; everything the bench started is stopped[/yellow]")
            raise typer.Exit(130) from None
        except (RuntimeError, TimeoutError, RuntimeSetupError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        for table in report.tables(results):
            console.print(table)
        report.write_json(results, out / "results.json")
        report.plot(results, out / "bench.png")
        console.print(f"results: {out / 'results.json'}  plot: {out / 'bench.png'}  logs: {out}")
