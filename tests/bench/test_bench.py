"""`rtap bench` end to end at a small rate: every section of results.json measured, the run reconciled
exactly, and the plot a real PNG. The bench starts its own private stack (free ports, temporary state)."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import orjson
import pytest

from infrastructure.bench.stack import RTAP

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.flink,
    pytest.mark.redis,
    pytest.mark.clickhouse,
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    argv = [
        str(RTAP),
        "bench",
        "--rate",
        "1000",
        "--duration",
        "15",
        "--ingest-duration",
        "3",
        "--warmup",
        "3",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "160"}
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return orjson.loads((out / "results.json").read_bytes()), out, result.stdout


def test_ingest_phases_are_measured(bench):
    results, _, _ = bench
    assert [p["name"] for p in results["ingest"]] == ["single", "batch"]
    for phase in results["ingest"]:
        assert phase["requests_per_s"] > 0 and phase["events_per_s"] > 0 and phase["server_cpu_cores"] > 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"]


def test_end_to_end_run_is_reconciled_exactly(bench):
    e2e = bench[0]["end_to_end"]
    assert e2e["differences"] == 0 and e2e["reconciled_exactly"], e2e["differences_sample"]
    assert e2e["events"] == 15_000 and e2e["accepted"] == 15_000
    assert e2e["sustained_accepted_per_s"] > 0 and e2e["settle_seconds"] > 0
    assert all(n > 0 for n in e2e["windows"].values())
    assert max(bench[0]["throughput_series"]["events_per_s"]) > 0


@pytest.mark.parametrize("job", ["event_metrics", "performance_metrics"])
@pytest.mark.parametrize("layer", ["cache", "clickhouse", "kafka"])
def test_freshness_percentiles_cover_every_window(bench, job, layer):
    fresh = bench[0]["freshness"][job][layer]
    assert fresh["windows"] == bench[0]["end_to_end"]["windows"][job] and fresh["missing"] == 0
    assert fresh["p50_ms"] <= fresh["p95_ms"] <= fresh["p99_ms"] <= fresh["max_ms"]


def test_memory_of_every_process_is_sampled(bench):
    memory = bench[0]["memory"]
    expected = {
        "kafka",
        "redis",
        "flink-jobmanager",
        "flink-taskmanager",
        "ingestion",
        "storage",
        "cache",
        "processing",
    }
    assert expected <= set(memory["processes"])
    assert all(memory["processes"][name]["peak_mb"] > 0 for name in expected)
    assert memory["total"]["peak_mb"] >= memory["total"]["mean_mb"] > 0


def test_plot_is_a_png_and_the_tables_are_printed(bench):
    _, out, stdout = bench
    data = (out / "bench.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1200, 900)
    for title in ("ingest", "end to end", "freshness", "memory", "against the targets"):
        assert title in stdout
