"""The bench results as rich tables, a JSON file and a PNG plot (accepted rate over time, freshness,
memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

# The targets for this machine.
TARGET_EVENTS_PER_S = 50_000
TARGET_DURATION_S = 300
TARGET_P95_MS = {"cache": 1_000, "clickhouse": 3_000}
TARGET_MEMORY_MB = 4_096
LAYERS = ("cache", "clickhouse", "kafka")


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ingest_table(phases: list[dict[str, Any]]) -> Table:
    table = Table(title="ingest (benchmarks/ingestion.py)")
    for col in (
        "phase",
        "req/s",
        "events/s",
        "server CPU cores",
        "events per server CPU-s",
        "p50 ms",
        "p99 ms",
    ):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p in phases:
        table.add_row(
            p["name"],
            f"{p['requests_per_s']:,.0f}",
            f"{p['events_per_s']:,.0f}",
            f"{p['server_cpu_cores']:.2f}",
            f"{p['events_per_server_cpu_second']:,.0f}",
            f"{p['p50_ms']:.1f}",
            f"{p['p99_ms']:.1f}",
        )
    return table


def end_to_end_table(e2e: dict[str, Any]) -> Table:
    table = Table(title="end to end (rtap load -> every layer, reconciled against the manifest)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("target rate, duration", f"{e2e['target_rate']:,.0f} events/s for {e2e['duration_s']:g} s"),
        (
            "events sent / accepted / not accepted",
            f"{e2e['events']:,} / {e2e['accepted']:,} / {e2e['not_accepted']:,}",
        ),
        ("accepted events/s (whole load, incl. sender start)", f"{e2e['accepted_per_s']:,.0f}"),
        ("accepted events/s (ingestion counter, sustained)", f"{e2e['sustained_accepted_per_s']:,.0f}"),
        ("reconciliation", "exact" if e2e["reconciled_exactly"] else f"{e2e['differences']:,} differences"),
        ("load end -> every layer reconciled", f"{e2e['settle_seconds']:.1f} s"),
        ("windows", ", ".join(f"{job} {n:,}" for job, n in e2e["windows"].items())),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def freshness_table(freshness: dict[str, Any]) -> Table:
    table = Table(title="freshness: window close (end + watermark delay) -> final record visible, ms")
    for col in ("job", "layer", "windows", "missing", "p50", "p95", "p99", "max"):
        table.add_column(col, justify="left" if col in ("job", "layer") else "right")
    for job, layers in freshness.items():
        for layer in LAYERS:
            d = layers[layer]
            name = {"kafka": "kafka (Flink emit)"}.get(layer, layer)
            table.add_row(
                job,
                name,
                str(d["windows"]),
                str(d["missing"]),
                ms(d["p50_ms"]),
                ms(d["p95_ms"]),
                ms(d["p99_ms"]),
                ms(d["max_ms"]),
            )
    return table


def memory_table(memory: dict[str, Any]) -> Table:
    table = Table(title=f"memory (RSS of each process tree, {memory['samples']} samples, 1/s)")
    for col in ("process", "peak MB", "mean MB"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for name, m in sorted(memory["processes"].items(), key=lambda item: -item[1]["peak_mb"]):
        table.add_row(name, f"{m['peak_mb']:,.0f}", f"{m['mean_mb']:,.0f}")
    table.add_row(
        "[bold]total[/bold]",
        f"[bold]{memory['total']['peak_mb']:,.0f}[/bold]",
        f"[bold]{memory['total']['mean_mb']:,.0f}[/bold]",
    )
    return table


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, wanted, measured, met) for each of the issue's targets."""
    e2e, fresh, memory = results["end_to_end"], results["freshness"], results["memory"]
    out = [
        (
            "end-to-end throughput",
            f">= {TARGET_EVENTS_PER_S:,} events/s for {TARGET_DURATION_S} s, exact",
            f"{e2e['sustained_accepted_per_s']:,.0f} events/s for {e2e['duration_s']:g} s, "
            + ("exact" if e2e["reconciled_exactly"] else f"{e2e['differences']} differences"),
            e2e["sustained_accepted_per_s"] >= TARGET_EVENTS_PER_S
            and e2e["duration_s"] >= TARGET_DURATION_S
            and e2e["reconciled_exactly"],
        )
    ]
    for layer, limit in TARGET_P95_MS.items():
        worst = [fresh[job][layer]["p95_ms"] for job in fresh]
        measured = max((w for w in worst if w is not None), default=None)
        missing = sum(fresh[job][layer]["missing"] for job in fresh)
        out.append(
            (
                f"freshness p95, {layer}",
                f"<= {limit:,} ms",
                f"{ms(measured)} ms (worst job)" + (f", {missing} windows unseen" if missing else ""),
                measured is not None and measured <= limit and not missing,
            )
        )
    total = memory["total"]["peak_mb"]
    out.append(
        (
            "memory of the stack",
            f"<= {TARGET_MEMORY_MB:,} MB",
            f"{total:,.0f} MB peak",
            total <= TARGET_MEMORY_MB,
        )
    )
    return out


def targets_table(results: dict[str, Any]) -> Table:
    table = Table(title="against the targets")
    for col in ("target", "wanted", "measured", "met"):
        table.add_column(col)
    for name, wanted, measured, met in targets(results):
        table.add_row(name, wanted, measured, "[green]yes[/green]" if met else "[red]no[/red]")
    return table


def tables(results: dict[str, Any]) -> list[Table]:
    out = [ingest_table(results["ingest"])] if results.get("ingest") else []
    return out + [
        end_to_end_table(results["end_to_end"]),
        freshness_table(results["freshness"]),
        memory_table(results["memory"]),
        targets_table(results),
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def plot(results: dict[str, Any], path: Path) -> None:
    """Three panels, 1200x900 px: accepted events/s over time, freshness per job and layer, memory per
    process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, fresh_ax, mem_ax) = plt.subplots(3, 1, figsize=(12, 9), dpi=100)
    e2e = results["end_to_end"]
    series = results["throughput_series"]
    rate_ax.plot(series["t"], series["events_per_s"], label="accepted (ingestion counter)")
    rate_ax.axhline(
        e2e["target_rate"], color="gray", linestyle="--", label=f"--rate {e2e['target_rate']:,.0f}"
    )
    rate_ax.set(
        title="accepted events/s during the run", xlabel="seconds since the load started", ylabel="events/s"
    )
    rate_ax.legend(loc="lower right")

    labels, data = [], []
    for job, layers in results["freshness"].items():
        for layer in LAYERS:
            delays = layers[layer]["delays_ms"]
            if delays:
                labels.append(f"{job}\n{layer}")
                data.append([d / 1000 for d in delays])
    if data:
        fresh_ax.boxplot(data, whis=(5, 95), showfliers=True)
        fresh_ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    for limit in TARGET_P95_MS.values():
        fresh_ax.axhline(limit / 1000, color="gray", linestyle=":", linewidth=1)
    fresh_ax.set(
        title=("freshness: window close + watermark -> final record visible (box 25-75%, whiskers 5-95%)"),
        ylabel="seconds",
    )

    memory = results["memory"]
    names = sorted(memory["processes"], key=lambda n: -memory["processes"][n]["peak_mb"])
    peaks = [memory["processes"][n]["peak_mb"] for n in names]
    means = [memory["processes"][n]["mean_mb"] for n in names]
    positions = range(len(names))
    mem_ax.bar([p - 0.2 for p in positions], peaks, width=0.4, label="peak")
    mem_ax.bar([p + 0.2 for p in positions], means, width=0.4, label="mean")
    mem_ax.set_xticks(list(positions), names, fontsize=8)
    mem_ax.set(
        title=f"memory per process tree (total peak {memory['total']['peak_mb']:,.0f} MB)", ylabel="MB RSS"
    )
    mem_ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
