"""`rtap dlq` without a broker: what it prints of hostile bytes is escaped and bounded; selections match as
the options say; an unreachable Kafka is a clear error."""

from __future__ import annotations

from typer.testing import CliRunner

from infrastructure import cli
from infrastructure.dlq.commands import preview, printable, value_text
from infrastructure.dlq.reader import Selection
from shared.dead_letters import DeadLetter


def letter(
    reason: str = "value is not JSON", topic: str = "analytics_events", at: int | None = 1_000
) -> DeadLetter:
    return DeadLetter(0, 7, at, reason, topic, 0, 3, "storage", 0, 10)


def test_text_keeps_what_prints_and_escapes_the_rest_within_its_limit():
    assert printable("müde [red]x[/]", 100) == "müde [red]x[/]"
    assert printable("a\x1b[31m\x00\n\u2028", 100) == "a\\x1b[31m\\x00\\n\\u2028"
    assert printable("x" * 50, 10) == "x" * 10 + "…"


def test_a_value_is_pretty_json_when_small_and_json_else_an_escaped_bounded_preview():
    assert value_text(b'{"a":[1,2]}', 100) == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert value_text(None, 100) == "(no value: a tombstone)"
    assert value_text(b"\xff\x00{", 100) == "\\xff\\x00{"
    big = b'{"a": "' + b"x" * 1_000 + b'"}'
    assert value_text(big, 16) == '{"a": "xxxxxxxxx… (993 more bytes)'
    assert len(preview(bytes(range(256)) * 1_000, 64)) < 400


def test_a_selection_matches_reason_in_any_case_topic_exactly_and_time_in_half_open_bounds():
    assert Selection(reason="NOT json").matches(letter())
    assert not Selection(reason="missing").matches(letter())
    assert Selection(source_topic="analytics_events").matches(letter())
    assert not Selection(source_topic="analytics").matches(letter())
    assert Selection(since_ms=1_000, until_ms=1_001).matches(letter())
    assert not Selection(until_ms=1_000).matches(letter())
    assert not Selection(since_ms=0).matches(letter(at=None))


def test_an_unreachable_kafka_is_one_line_on_stderr_and_exit_code_1(monkeypatch):
    monkeypatch.setenv("RTAP_KAFKA__BOOTSTRAP", "127.0.0.1:1")
    result = CliRunner().invoke(cli.app, ["dlq", "list"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: Kafka not reachable at 127.0.0.1:1") and not result.stdout
