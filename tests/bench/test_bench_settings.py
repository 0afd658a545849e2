"""The bench stack's settings are valid: its reconciliation reads fit the storage API's reader limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infrastructure.bench.run import BenchConfig, bench_env
from shared.settings import Settings, StorageSettings


@pytest.mark.parametrize("rate, duration", [(1_000, 15), (5_000, 60), (20_000, 120)])
def test_bench_reads_every_window_within_the_reader_limits(monkeypatch, rate, duration):
    for name, value in bench_env(BenchConfig(rate=rate, duration=duration)).items():
        monkeypatch.setenv(name, value)
    storage = Settings().storage
    assert storage.max_limit >= rate * duration, "a reconciliation read returns every window of the run"
    assert storage.sql_max_rows >= storage.max_limit


def test_a_metric_read_limit_over_the_sql_row_limit_is_refused_at_start():
    with pytest.raises(
        ValidationError, match=r"storage.max_limit \(20000\) must not exceed storage.sql_max_rows"
    ):
        StorageSettings(max_limit=20_000, sql_max_rows=10_000)
