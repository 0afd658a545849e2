"""`rtap sql "SELECT ..."`: a read-only query of the stored metrics through the storage query API."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.settings import Settings

console = Console()
err_console = Console(stderr=True)


def parse_params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not name=value", param_hint="--param")
        out[name] = value
    return out


def result_table(columns: list[str], rows: list[dict[str, Any]]) -> Table:
    table = Table(show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("NULL" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


def _error_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail)


def register(app: typer.Typer) -> None:
    @app.command("sql")
    def sql(
        statement: Annotated[
            str, typer.Argument(help="One SELECT; bind values as {name:Type} with --param name=value")
        ],
        param: Annotated[
            list[str] | None,
            typer.Option("--param", "-p", help="name=value for a {name:Type} placeholder"),
        ] = None,
        url: Annotated[str | None, typer.Option(help="storage API URL (default: from settings)")] = None,
        key: Annotated[
            str | None,
            typer.Option(envvar="RTAP_READ_KEY", help="read key (default: first of RTAP_STORAGE__READ_KEYS)"),
        ] = None,
    ) -> None:
        """Run a read-only SQL query on the stored metrics and print the result as a table."""
        settings = Settings()
        base = url or f"http://{settings.storage.host}:{settings.storage.port}"
        key = key or (settings.storage.read_keys[0] if settings.storage.read_keys else None)
        headers = {"X-Read-Key": key} if key else {}
        try:
            response = httpx.post(
                f"{base}/v1/sql",
                json={"sql": statement, "params": parse_params(param or [])},
                headers=headers,
                timeout=settings.storage.sql_max_seconds + 10,
            )
        except httpx.HTTPError as exc:
            err_console.print(
                f"[red]storage API not reachable at {base}[/red] ({type(exc).__name__}); "
                "is it running? (rtap up)"
            )
            raise typer.Exit(1) from None
        if response.status_code != 200:
            err_console.print(f"[red]HTTP {response.status_code}:[/red] {_error_message(response)}")
            raise typer.Exit(2 if response.status_code < 500 else 1)
        body = response.json()
        console.print(result_table(body["columns"], body["rows"]))
        console.print(f"{body['row_count']} row(s)")
