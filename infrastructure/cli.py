"""rtap: the front door to the local pipeline (up, down, status, setup, lint, test)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from infrastructure.local import jars
from infrastructure.local.components import REPO_ROOT, Component, Status
from infrastructure.local.errors import RuntimeSetupError
from infrastructure.local.stack import Stack
from shared.settings import Profile, SettingsError, stack_settings

console = Console()
err = Console(stderr=True)


class Commands(TyperGroup):
    """rtap's commands: settings that do not validate are a message and exit code 2, whichever command reads
    them (each reads them with stack_settings)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            err.print(f"[red]configuration error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=Commands,
    help="Real-time analytics pipeline: run it locally, inspect it, test it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


ProfileOption = Annotated[
    Profile | None,
    typer.Option(
        "--profile",
        help="Topology preset: single or ha (3 Kafka brokers, 2 TaskManagers, 2 ingestion workers, 2 cache "
        "processes). Default: RTAP_PROFILE, else the state directory's profile, else single.",
    ),
]


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@app.command()
def setup(quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Resolve the Maven jars (Kafka, Flink's Kafka connector); build the Java functions into the state."""
    settings = stack_settings()
    try:
        Stack(settings).check_state_dir()
        for bundle in ("kafka", "flink"):
            folder = jars.resolve(bundle, settings.state_path / "jars")
            if not quiet:
                console.print(f"{bundle}: {len(list(folder.glob('*.jar')))} jars in {folder}")
        shipped = jars.prepare_pipeline_jars(settings)
        if not quiet:
            console.print(f"jars shipped with each processing job: {', '.join(str(jar) for jar in shipped)}")
    except RuntimeSetupError as exc:
        _fail(exc)


def status_table(statuses: list[Status]) -> Table:
    table = Table(title="rtap local stack")
    for col in ("component", "state", "pid", "url", "health"):
        table.add_column(col)
    colors = {"running": "green", "embedded": "green", "stopped": "dim", "unhealthy": "red"}
    for s in statuses:
        table.add_row(
            s.name, f"[{colors.get(s.state, 'white')}]{s.state}[/]", str(s.pid or "-"), s.url, s.detail
        )
    return table


@app.command()
def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start in the background and return.")
    ] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Start only these components.")] = None,
    profile: ProfileOption = None,
) -> None:
    """Start every component (Kafka, Redis, ClickHouse, Flink, Prometheus, the services) of the profile."""
    settings = stack_settings(profile)
    stack = Stack(settings, only=only)
    try:
        with console.status("starting") as spinner:

            def started(component: Component) -> None:
                console.print(f"[green]✓[/green] {component.name} {component.url()}")
                spinner.update(f"starting (after {component.name})")

            stack.up(on_started=started)
    except RuntimeSetupError as exc:
        _fail(exc)
    console.print(status_table(stack.status()))
    console.print(f"state: {settings.state_path}   logs: {settings.state_path / 'logs'}")
    if detach:
        console.print("running in the background; stop with [bold]rtap down[/bold]")
        return
    console.print("running; press Ctrl-C to stop")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    console.print("stopping")
    stack.down()


@app.command()
def down(profile: ProfileOption = None) -> None:
    """Stop every component started by `rtap up` (state is kept)."""
    stopped = Stack(stack_settings(profile)).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status(profile: ProfileOption = None) -> None:
    """Show each process of the profile: state, pid, URL, health. Exit code 1 when any is not healthy."""
    statuses = Stack(stack_settings(profile)).status()
    console.print(status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


# Each tool reads its configuration from pyproject.toml.
LINT_STEPS = (
    ("ruff format --check", ("ruff", "format", "--check", ".")),
    ("ruff check", ("ruff", "check", ".")),
    ("mypy", ("mypy",)),
)


def run_lint() -> int:
    """Run LINT_STEPS in order; 0 when all pass, else the exit code of the first that fails."""
    for name, args in LINT_STEPS:
        err.print(f"lint: {name}")
        code = subprocess.call([sys.executable, "-m", *args], cwd=REPO_ROOT)
        if code:
            err.print(f"[red]lint: {name} failed (exit {code})[/red]")
            return code
    return 0


@app.command()
def lint() -> None:
    """Check formatting, lint rules (ruff) and types (mypy --strict), as pyproject.toml configures them."""
    raise typer.Exit(run_lint())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(
    ctx: typer.Context,
    with_lint: Annotated[bool, typer.Option("--lint/--no-lint", help="run `rtap lint` first")] = True,
) -> None:
    """Run `rtap lint`, then every test (pytest) on real components; extra arguments go to pytest."""
    if with_lint and (code := run_lint()):
        raise typer.Exit(code)
    cmd = [sys.executable, "-m", "pytest", *ctx.args]
    raise typer.Exit(subprocess.call(cmd, cwd=REPO_ROOT, env={**os.environ}))


# Services add their own commands (backfill, sql, load) in services/<name>/commands.py, each exposing
# register(app); bench and dlq are tooling beside the CLI. tests/foundation/test_cli_commands.py keeps this
# list equal to the commands.py files that exist; a module that cannot be imported stops the CLI.
COMMAND_MODULES = (
    "services.processing.commands",
    "services.storage.commands",
    "services.loadgen.commands",
    "infrastructure.bench.commands",
    "infrastructure.dlq.commands",
)
for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)

if __name__ == "__main__":
    app()
