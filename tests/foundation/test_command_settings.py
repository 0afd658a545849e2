"""Every rtap command that talks to a stack sees the settings of the stack in its state directory: the profile
`rtap up --profile` recorded there, unless --profile or RTAP_PROFILE names another. No process is started:
each command is stopped where it hands its settings on."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from infrastructure import cli
from infrastructure.bench import commands as bench_commands
from infrastructure.bench.run import bench_env
from infrastructure.local.isolated import isolated_settings
from infrastructure.local.stack import Stack
from shared.settings import Settings, stack_settings

# (arguments, module, the function the command hands its settings to as the first argument)
COMMANDS = [
    (["setup"], "infrastructure.cli", "Stack"),
    (["up"], "infrastructure.cli", "Stack"),
    (["down"], "infrastructure.cli", "Stack"),
    (["status"], "infrastructure.cli", "Stack"),
    (["load", "--events", "1"], "services.loadgen.commands", "default_manifest"),
    (["sql", "SELECT 1"], "services.storage.commands", "call_storage"),
    (["funnel", "--step", "a", "--step", "b"], "services.storage.commands", "call_storage"),
    (["retention"], "services.storage.commands", "call_storage"),
    (["top-pages"], "services.storage.commands", "call_storage"),
    (["sources"], "services.storage.commands", "call_storage"),
    (["backfill", "--from", "0", "--to", "60000"], "services.processing.commands", "bounds_for"),
    (["dlq", "list"], "infrastructure.dlq.commands", "list_letters"),
    (["dlq", "show", "0"], "infrastructure.dlq.commands", "show_letter"),
    (["dlq", "replay"], "infrastructure.dlq.commands", "replay_letters"),
]
each_command = pytest.mark.parametrize(
    ("args", "module", "function"), COMMANDS, ids=[" ".join(args) for args, *_ in COMMANDS]
)
# The bench starts a private stack of the resolved profile (test below); lint and test use no stack.
OTHER_COMMANDS = {"bench", "lint", "test"}


class Handed(Exception):
    """Raised by the spy standing in for the function a command hands its settings to."""

    def __init__(self, settings: Settings):
        super().__init__("handed on")
        self.settings = settings


def spy(settings: Settings, *_: object, **__: object) -> None:
    raise Handed(settings)


@pytest.fixture
def recorded_ha(tmp_path, monkeypatch) -> Path:
    """A state directory `rtap up --profile ha` created, named by RTAP_STATE_DIR; no other RTAP_* variable."""
    for name in [name for name in os.environ if name.startswith("RTAP_")]:
        monkeypatch.delenv(name)
    state = tmp_path / "state"
    Stack(isolated_settings(state, RTAP_PROFILE="ha")).check_state_dir()
    monkeypatch.setenv("RTAP_STATE_DIR", str(state))
    return state


def settings_used(monkeypatch, args: list[str], module: str, function: str) -> Settings:
    monkeypatch.setattr(importlib.import_module(module), function, spy)
    result = CliRunner().invoke(cli.app, args)
    assert isinstance(result.exception, Handed), f"{args}: {result.exception!r}\n{result.output}"
    return result.exception.settings


def command_names(app: typer.Typer, prefix: str = "") -> set[str]:
    names = {prefix + (c.name or c.callback.__name__.replace("_", "-")) for c in app.registered_commands}
    for group in app.registered_groups:
        names |= command_names(group.typer_instance, f"{prefix}{group.name} ")
    return names


def test_every_command_is_checked_here():
    checked = {" ".join(args[:2]) if args[0] == "dlq" else args[0] for args, *_ in COMMANDS}
    assert command_names(cli.app) == checked | OTHER_COMMANDS


@each_command
def test_every_command_uses_the_profile_the_state_directory_records(
    recorded_ha, monkeypatch, args, module, function
):
    s = settings_used(monkeypatch, args, module, function)
    assert s.profile == "ha"
    assert (s.kafka.brokers, s.kafka.replication_factor, s.flink.taskmanagers, s.cache.instances) == (
        3,
        3,
        2,
        2,
    )
    assert len(s.kafka.bootstrap.split(",")) == 3


@each_command
def test_rtap_profile_wins_over_the_recorded_profile(recorded_ha, monkeypatch, args, module, function):
    monkeypatch.setenv("RTAP_PROFILE", "single")
    s = settings_used(monkeypatch, args, module, function)
    assert (s.profile, s.kafka.brokers) == ("single", 1)


@each_command
def test_settings_that_do_not_validate_are_one_message_and_exit_code_2(
    recorded_ha, monkeypatch, args, module, function
):
    monkeypatch.setenv("RTAP_KAFKA__MIN_INSYNC_REPLICAS", "4")  # above the ha preset's replication factor 3
    monkeypatch.setattr(importlib.import_module(module), function, spy)
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, f"{result.exception!r}\n{result.output}"
    assert "configuration error" in result.stderr and "min_insync_replicas (4)" in result.stderr


def test_the_profile_option_wins_over_the_recorded_profile(recorded_ha, monkeypatch):
    s = settings_used(monkeypatch, ["status", "--profile", "single"], "infrastructure.cli", "Stack")
    assert (s.profile, s.kafka.brokers) == ("single", 1)


def test_an_explicit_count_wins_over_the_recorded_profile(recorded_ha, monkeypatch):
    monkeypatch.setenv("RTAP_KAFKA__BROKERS", "5")
    s = settings_used(monkeypatch, ["dlq", "list"], "infrastructure.dlq.commands", "list_letters")
    assert (s.profile, s.kafka.brokers, s.kafka.replication_factor) == ("ha", 5, 3)


def test_a_setting_valid_only_in_the_recorded_profile_is_read_in_it(recorded_ha, monkeypatch):
    monkeypatch.setenv("RTAP_KAFKA__MIN_INSYNC_REPLICAS", "2")  # above the single preset's replication factor
    s = settings_used(monkeypatch, ["status"], "infrastructure.cli", "Stack")
    assert (s.profile, s.kafka.replication_factor, s.kafka.min_insync_replicas) == ("ha", 3, 2)


def test_the_bench_stack_has_the_recorded_profile(recorded_ha, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "environ", os.environ.copy())  # what the command sets stays in this test
    monkeypatch.setattr(bench_commands.signal, "signal", lambda *_: None)
    monkeypatch.setattr(bench_commands, "run_bench", spy)
    result = CliRunner().invoke(cli.app, ["bench"])
    assert isinstance(result.exception, Handed), f"{result.exception!r}\n{result.output}"
    config = result.exception.settings  # run_bench's first argument is the BenchConfig
    bench = isolated_settings(tmp_path / "bench", **bench_env(config))  # as full_stack builds it
    assert (bench.profile, bench.kafka.brokers, bench.cache.instances) == ("ha", 3, 2)


def test_without_a_recorded_profile_the_settings_are_single(tmp_path, monkeypatch):
    for name in [name for name in os.environ if name.startswith("RTAP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RTAP_STATE_DIR", str(tmp_path / "never-started"))
    assert stack_settings().profile == "single"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / ".rtap-state").write_text("not json")
    monkeypatch.setenv("RTAP_STATE_DIR", str(tmp_path / "foreign"))
    assert stack_settings().profile == "single"
