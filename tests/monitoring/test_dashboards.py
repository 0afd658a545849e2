"""Grafana dashboards: committed JSON equals the generator's output; every panel query runs for real."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import pytest

from services.processing.registry import builtin_schemas, load_schemas
from services.storage.tables import metric_table

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "grafana"


def generator():
    spec = importlib.util.spec_from_file_location("rtap_dashboards", GRAFANA_DIR / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def targets(datasource_type: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == datasource_type:
                    found.append((panel["title"], target.get("expr") or target.get("rawSql")))
    return found


def test_committed_dashboards_equal_the_generated_ones():
    gen = generator()
    for name, build in gen.DASHBOARDS.items():
        committed = (GRAFANA_DIR / "dashboards" / f"{name}.json").read_text()
        assert committed == gen.render(build), f"{name}.json is stale: run monitoring/grafana/dashboards.py"


def test_every_built_in_job_has_a_derived_panel():
    panels = json.loads((GRAFANA_DIR / "dashboards" / "jobs.json").read_text())["panels"]
    from_tables = {panel["targets"][0]["rawSql"].split(" FROM ")[1].split()[0] for panel in panels}
    assert from_tables == set(builtin_schemas()) >= {"event_metrics", "session_metrics", "top_pages"}


def test_every_panel_has_a_query():
    assert len(targets("prometheus")) >= 10 and len(targets("grafana-clickhouse-datasource")) >= 5


@pytest.mark.parametrize("title, expr", targets("prometheus"))
def test_promql_panel_query_runs_on_prometheus(prometheus, title, expr):
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", f"{title}: {response}"


@pytest.mark.clickhouse
def test_sql_panel_queries_run_on_the_metric_tables(tmp_path):
    from chdb import session

    db = session.Session(str(tmp_path / "chdb"))
    try:
        db.query("CREATE DATABASE IF NOT EXISTS rtap")
        for schema in load_schemas().values():
            db.query(metric_table(schema).create_sql("rtap"))
        for _title, sql in targets("grafana-clickhouse-datasource"):
            concrete = sql.replace(generator().TIME_FILTER, "window_start >= now() - INTERVAL 1 DAY")
            db.query(concrete.replace("FROM ", "FROM rtap."))  # raises on an unknown column or bad SQL
    finally:
        db.close()
