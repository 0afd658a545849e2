"""The CLI's command modules are exactly the commands.py files that exist, and each one registers commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

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
        assert app.registered_commands or app.registered_groups, f"{module}.register added no command"


def test_the_cli_offers_each_documented_command():
    names = {command.name or command.callback.__name__ for command in cli.app.registered_commands}
    names |= {group.name for group in cli.app.registered_groups}
    assert {"up", "down", "status", "setup", "test", "load", "sql", "backfill", "bench", "dlq"}
    assert {"funnel", "retention", "top-pages", "sources"} <= names <= names


def test_the_test_command_lints_first_and_stops_on_the_first_failing_step(monkeypatch):
    calls: list[list[str]] = []

    def call(cmd: list[str], **_: object) -> int:
        calls.append(cmd)
        return 3 if cmd[2:4] == ["ruff", "check"] else 0

    monkeypatch.setattr(cli.subprocess, "call", call)
    result = CliRunner().invoke(cli.app, ["test", "-k", "nothing"])
    assert result.exit_code == 3
    assert [cmd[2:4] for cmd in calls] == [["ruff", "format"], ["ruff", "check"]]


def test_the_test_command_runs_pytest_with_its_arguments_after_a_clean_lint(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, **_: calls.append(cmd) or 0)
    result = CliRunner().invoke(cli.app, ["test", "-k", "nothing"])
    assert result.exit_code == 0
    assert [cmd[2] for cmd in calls] == ["ruff", "ruff", "mypy", "pytest"]
    assert calls[-1][3:] == ["-k", "nothing"]


def test_the_lint_configuration_refuses_what_the_issue_names(tmp_path):
    """The project's own ruff and mypy settings, on a file with a long line and an untyped function."""
    bad = tmp_path / "bad.py"
    bad.write_text(f"def f(x):\n    return x  # {'x' * 110}\n")
    config = str(REPO_ROOT / "pyproject.toml")
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", config, str(bad)], capture_output=True, text=True
    )
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", config, str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ruff.returncode == 1 and "E501" in ruff.stdout, ruff.stdout
    assert mypy.returncode == 1 and "no-untyped-def" in mypy.stdout, mypy.stdout
