"""`rtap sql "SELECT ..."` and the analytics commands (`rtap funnel`, `retention`, `top-pages`, `sources`):
read-only queries through the storage query API, printed as tables."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.settings import Settings, stack_settings

console = Console()
err_console = Console(stderr=True)
DAY_MS = 86_400_000

UrlOption = Annotated[str | None, typer.Option(help="storage API URL (default: from settings)")]
KeyOption = Annotated[
    str | None,
    typer.Option(envvar="RTAP_READ_KEY", help="read key (default: first of RTAP_STORAGE__READ_KEYS)"),
]
FromOption = Annotated[
    str | None, typer.Option("--from", help="event time, epoch ms or ISO-8601 (default: 7 days before --to)")
]
ToOption = Annotated[str | None, typer.Option("--to", help="event time, epoch ms or ISO-8601 (default: now)")]


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


def call_storage(
    settings: Settings, method: str, path: str, url: str | None, key: str | None, **request: Any
) -> Any:
    """The storage API's JSON answer; an error is printed and exits 2 (a refusal, 4xx) or 1 (all else)."""
    base = url or settings.storage.url
    key = key or (settings.storage.read_keys[0] if settings.storage.read_keys else None)
    headers = {"X-Read-Key": key} if key else {}
    try:
        response = httpx.request(
            method, f"{base}{path}", headers=headers, timeout=settings.storage.sql_max_seconds + 10, **request
        )
    except httpx.HTTPError as exc:
        err_console.print(
            f"[red]storage API not reachable at {base}[/red] ({type(exc).__name__}); is it running? (rtap up)"
        )
        raise typer.Exit(1) from None
    if response.status_code != 200:
        err_console.print(f"[red]HTTP {response.status_code}:[/red] {_error_message(response)}")
        raise typer.Exit(2 if response.status_code < 500 else 1)
    return response.json()


def time_range(from_: str | None, to: str | None) -> dict[str, str]:
    """The API's from/to; left out, the last 7 days up to now (the API checks both)."""
    end = to or str(int(time.time() * 1000))
    start = from_ or (str(int(end) - 7 * DAY_MS) if end.lstrip("-").isdigit() else None)
    if start is None:
        raise typer.BadParameter("give --from when --to is not epoch milliseconds", param_hint="--from")
    return {"from": start, "to": end}


def funnel_table(body: dict[str, Any]) -> Table:
    columns = ["step", "event_type", "users", "conversion"]
    if body["breakdown"] != "none":
        columns.insert(0, body["breakdown"])
    rows = [
        {**r, body["breakdown"]: r["breakdown"], "conversion": f"{r['conversion']:.1%}"} for r in body["rows"]
    ]
    return result_table(columns, rows)


def retention_table(body: dict[str, Any]) -> Table:
    periods = max((len(c["returning"]) for c in body["cohorts"]), default=0)
    offsets = [f"{body['period']} {k}" for k in range(1, periods + 1)]
    rows = [
        {"cohort": c["cohort"], "users": c["users"], **dict(zip(offsets, c["returning"], strict=False))}
        for c in body["cohorts"]
    ]
    return result_table(["cohort", "users", *offsets], rows)


def print_rows(body: dict[str, Any]) -> None:
    columns = list(body["rows"][0].keys()) if body["rows"] else []
    console.print(result_table(columns, body["rows"]))
    console.print(f"{body['row_count']} row(s)")


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
        url: UrlOption = None,
        key: KeyOption = None,
    ) -> None:
        """Run a read-only SQL query on the stored metrics and print the result as a table."""
        body = call_storage(
            stack_settings(),
            "POST",
            "/v1/sql",
            url,
            key,
            json={"sql": statement, "params": parse_params(param or [])},
        )
        console.print(result_table(body["columns"], body["rows"]))
        console.print(f"{body['row_count']} row(s)")

    register_analytics(app)


def register_analytics(app: typer.Typer) -> None:
    @app.command("funnel")
    def funnel(
        step: Annotated[
            list[str], typer.Option("--step", "-s", help="an event type; give 2 or more, in order")
        ],
        from_: FromOption = None,
        to: ToOption = None,
        window: Annotated[int, typer.Option(help="conversion window in seconds")] = 86_400,
        breakdown: Annotated[str, typer.Option(help="none, referrer_host or page")] = "none",
        url: UrlOption = None,
        key: KeyOption = None,
    ) -> None:
        """Users reaching each step of a funnel (ordered event types within a conversion window)."""
        params = {**time_range(from_, to), "step": step, "window": window, "breakdown": breakdown}
        console.print(
            funnel_table(
                call_storage(stack_settings(), "GET", "/v1/analytics/funnel", url, key, params=params)
            )
        )

    @app.command("retention")
    def retention(
        from_: FromOption = None,
        to: ToOption = None,
        period: Annotated[str, typer.Option(help="day or week")] = "day",
        event: Annotated[str | None, typer.Option(help="count returns of this event type only")] = None,
        url: UrlOption = None,
        key: KeyOption = None,
    ) -> None:
        """Cohorts by the period users were first seen, and how many came back in each period after."""
        params = {**time_range(from_, to), "period": period, **({"event": event} if event else {})}
        console.print(
            retention_table(
                call_storage(stack_settings(), "GET", "/v1/analytics/retention", url, key, params=params)
            )
        )

    @app.command("top-pages")
    def top_pages(
        from_: FromOption = None,
        to: ToOption = None,
        limit: Annotated[int, typer.Option(help="how many pages")] = 10,
        url: UrlOption = None,
        key: KeyOption = None,
    ) -> None:
        """The most viewed pages (URL without query string) with unique users."""
        params = {**time_range(from_, to), "limit": limit}
        print_rows(call_storage(stack_settings(), "GET", "/v1/analytics/top-pages", url, key, params=params))

    @app.command("sources")
    def sources(
        from_: FromOption = None,
        to: ToOption = None,
        limit: Annotated[int, typer.Option(help="how many rows")] = 100,
        url: UrlOption = None,
        key: KeyOption = None,
    ) -> None:
        """Events, sessions and users by traffic source, medium, campaign and referrer class."""
        params = {**time_range(from_, to), "limit": limit}
        print_rows(call_storage(stack_settings(), "GET", "/v1/analytics/sources", url, key, params=params))
