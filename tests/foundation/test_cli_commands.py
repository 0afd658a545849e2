"""The CLI's command modules are exactly the commands.py files that exist, and each one registers commands."""

from __future__ import annotations

from pathlib import Path

import typer

from infrastructure import cli

REPO_ROOT = Path(__file__).resolve().parents[2]


def commands_files() -> set[str]:
    found = [*REPO_ROOT.glob("services/*/commands.py"), *REPO_ROOT.glob("infrastructure/*/commands.py")]
    return {".".join(path.relative_to(REPO_ROOT).with_suffix("").parts) for path in found}


def test_the_command_list_names_every_commands_module_and_only_those():
    assert set(cli.COMMAND_MODULES) == commands_files()


def test_every_command_module_registers_a_command():
    import importlib

    for module in cli.COMMAND_MODULES:
        app = typer.Typer()
        importlib.import_module(module).register(app)
        assert app.registered_commands, f"{module}.register added no command"


def test_the_cli_offers_each_documented_command():
    names = {command.name or command.callback.__name__ for command in cli.app.registered_commands}
    assert {"up", "down", "status", "setup", "test", "load", "sql", "backfill", "bench"} <= names
