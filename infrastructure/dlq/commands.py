"""`rtap dlq list|show|replay`: the records the consumers refused, read from the dead-letter topic boundedly
(docs/operations.md, Dead letters). Storage's and cache's processors judge a replay, so the tool lives above
both services."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from confluent_kafka import Message
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from infrastructure.dlq.reader import DeadLetterReader, DlqError, Selection
from services.processing.commands import parse_time
from shared.dead_letters import REPLAYED_FROM_DLQ_OFFSET, DeadLetter, header_text, message_headers
from shared.settings import Settings, stack_settings

if TYPE_CHECKING:
    from infrastructure.dlq.replay import Summary

console = Console()
err = Console(stderr=True)

STAYS_LISTED = (
    "A replayed record stays in the dead-letter topic (Kafka cannot delete records), so `rtap dlq list` "
    f"keeps showing it; each re-produced record carries the header {REPLAYED_FROM_DLQ_OFFSET}."
)
REASON_WIDTH = 100
SHOWN_HEADERS = 50

Reason = Annotated[str | None, typer.Option("--reason", help="a part of the reason header, any case")]
SourceTopic = Annotated[
    str | None, typer.Option("--source-topic", help="the topic the record was refused on")
]
Since = Annotated[
    str | None, typer.Option("--since", help="dead-lettered at or after: epoch ms or ISO time (UTC default)")
]
Until = Annotated[str | None, typer.Option("--until", help="dead-lettered before: epoch ms or ISO time")]
AsJson = Annotated[bool, typer.Option("--json", help="machine output: one JSON document on stdout")]


def selection(
    reason: str | None, source_topic: str | None, since: str | None, until: str | None, limit: int | None
) -> Selection:
    return Selection(
        reason=reason,
        source_topic=source_topic,
        since_ms=None if since is None else parse_time(since, "--since"),
        until_ms=None if until is None else parse_time(until, "--until"),
        limit=limit,
    )


def printable(text: str, limit: int) -> str:
    """`text` with each character that is not printable escaped, cut to `limit` characters."""
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    return shown if len(text) <= limit else shown + "…"


def preview(data: bytes, limit: int) -> str:
    """The first `limit` bytes as escaped text, and how many bytes were left out."""
    text = printable(data[:limit].decode("utf-8", "backslashreplace"), limit * 4)
    return text if len(data) <= limit else f"{text}… ({len(data) - limit} more bytes)"


def value_text(value: bytes | None, max_bytes: int) -> str:
    """Pretty JSON when the value is JSON of at most `max_bytes`, else an escaped preview of its start."""
    if value is None:
        return "(no value: a tombstone)"
    if len(value) <= max_bytes:
        try:
            return orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            pass
    return preview(value, max_bytes)


def iso(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def position(letter: DeadLetter) -> str:
    """The dead letter's offset (partition/offset in a dead-letter topic of several partitions)."""
    return str(letter.offset) if letter.partition == 0 else f"{letter.partition}/{letter.offset}"


def source(letter: DeadLetter) -> Text:
    parts = (letter.source_topic or None, letter.source_partition, letter.source_offset)
    where = "/".join("?" if part is None else str(part) for part in parts)
    return Text(printable(where, REASON_WIDTH))


def letters_table(letters: list[DeadLetter]) -> Table:
    table = Table(title="dead letters (oldest first)")
    for column in ("offset", "time (UTC)", "consumer", "source topic/partition/offset", "reason", "bytes"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            position(letter),
            iso(letter.timestamp_ms),
            Text(printable(letter.consumer, 40)),
            source(letter),
            Text(printable(letter.reason, REASON_WIDTH)),
            str(letter.key_bytes + letter.value_bytes),
        )
    return table


def refused_table(summary: Summary) -> Table:
    table = Table(title=f"still invalid, the first {len(summary.examples)}")
    for column in ("offset", "source topic/partition/offset", "refused now by"):
        table.add_column(column, overflow="fold")
    for letter, reason in summary.examples:
        table.add_row(position(letter), source(letter), Text(printable(reason, REASON_WIDTH)))
    return table


def headers_table(msg: Message) -> Table:
    table = Table(title="headers", show_header=False)
    table.add_column("name")
    table.add_column("value", overflow="fold")
    found = message_headers(msg)
    for name, value in found[:SHOWN_HEADERS]:
        table.add_row(Text(printable(name, 200)), Text(printable(header_text(value), 2_000)))
    if len(found) > SHOWN_HEADERS:
        table.add_row("…", f"{len(found) - SHOWN_HEADERS} more headers")
    return table


@contextmanager
def failing_clearly() -> Iterator[None]:
    """A DlqError becomes one line on stderr and exit code 1."""
    try:
        yield
    except DlqError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def print_json(document: object) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def list_letters(settings: Settings, chosen: Selection, as_json: bool) -> None:
    with failing_clearly(), DeadLetterReader(settings) as reader, err.status("reading dead letters"):
        letters = [letter for letter, _ in reader.select(chosen, reader.spans(chosen))]
    more = chosen.limit is not None and len(letters) >= chosen.limit
    if as_json:
        print_json(
            {"topic": reader.topic, "dead_letters": [d.as_json() for d in letters], "limit_reached": more}
        )
        return
    console.print(letters_table(letters))
    console.print(f"{len(letters)} dead letter(s) of topic {escape(reader.topic)}")
    if more:
        console.print(
            f"stopped at --limit {chosen.limit}: later ones may match (narrow with --since/--until)"
        )
    console.print(STAYS_LISTED, markup=False)


def show_letter(settings: Settings, partition: int, offset: int, max_bytes: int) -> None:
    with failing_clearly(), DeadLetterReader(settings) as reader:
        msg = reader.at(partition, offset)
    letter = DeadLetter.of(msg)
    console.print(f"dead letter {position(letter)} of {escape(reader.topic)}, {iso(letter.timestamp_ms)}")
    console.print(headers_table(msg))
    console.print(Text(f"key ({letter.key_bytes} bytes): {preview(msg.key() or b'', 200)}"), soft_wrap=True)
    console.print(f"value ({letter.value_bytes} bytes):")
    console.print(Text(value_text(msg.value(), max_bytes)), soft_wrap=True)


def replay_letters(settings: Settings, chosen: Selection, dry_run: bool) -> tuple[Summary, str | None]:
    """Offer every selected dead letter to a Replayer; the summary, and why it stopped early (or None)."""
    from infrastructure.dlq.replay import Replayer, consumer_processors  # the services' processors: on use

    replayer = Replayer(settings, consumer_processors(settings), dry_run)
    stopped = None
    try:
        with DeadLetterReader(settings) as reader, Progress(console=err, transient=True) as progress:
            spans = reader.spans(chosen)
            task = progress.add_task("replaying dead letters", total=sum(span.size for span in spans))
            for letter, msg in reader.select(chosen, spans, lambda n: progress.advance(task, n)):
                replayer.offer(letter, msg)
    except DlqError as exc:
        stopped = str(exc)
    except KeyboardInterrupt:
        stopped = "interrupted"
    return replayer.finish(), stopped


def print_summary(summary: Summary) -> None:
    replayed = "would be replayed (dry run)" if summary.dry_run else "replayed to their source topics"
    console.print(f"selected: {summary.selected}")
    console.print(f"{replayed}: {summary.replayed}")
    console.print(f"still invalid, left in the dead-letter topic: {sum(summary.invalid.values())}")
    if summary.invalid:
        by_reason = Table(title="still invalid, by reason")
        by_reason.add_column("records", justify="right")
        by_reason.add_column("reason", overflow="fold")
        for reason, count in summary.invalid.most_common():
            by_reason.add_row(str(count), Text(printable(reason, REASON_WIDTH)))
        console.print(by_reason)
        console.print(refused_table(summary))
    if summary.failed:
        err.print(f"[red]produce failures: {summary.failed}[/red]")
        for failure in summary.failures:
            err.print(Text(printable(failure, 500)))
    console.print(STAYS_LISTED, markup=False)


def register(app: typer.Typer) -> None:
    dlq = typer.Typer(
        help="Dead letters: list, show and replay the records the consumers refused.", no_args_is_help=True
    )
    app.add_typer(dlq, name="dlq")

    @dlq.command("list")
    def list_(
        reason: Reason = None,
        source_topic: SourceTopic = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int, typer.Option(min=1, max=10_000, help="show the first this many")] = 100,
        as_json: AsJson = False,
    ) -> None:
        """List dead letters (oldest first): offset, time, consumer, source, reason, size."""
        list_letters(stack_settings(), selection(reason, source_topic, since, until, limit), as_json)

    @dlq.command("show")
    def show(
        offset: Annotated[int, typer.Argument(min=0, help="the dead letter's offset")],
        partition: Annotated[int, typer.Option(min=0, help="partition of the dead-letter topic")] = 0,
        max_bytes: Annotated[
            int, typer.Option(min=1, max=1_000_000, help="show at most this much of the value")
        ] = 16_384,
    ) -> None:
        """Show one dead letter: its headers, key and value (pretty JSON, else an escaped preview)."""
        show_letter(stack_settings(), partition, offset, max_bytes)

    @dlq.command("replay")
    def replay(
        reason: Reason = None,
        source_topic: SourceTopic = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int | None, typer.Option(min=1, help="replay the first this many")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="validate only; produce nothing")] = False,
        as_json: AsJson = False,
    ) -> None:
        """Validate the selected dead letters as their consumers do now; produce the ones that pass to their
        source topic again (original key and value). Exit code 1 when a produce fails."""
        chosen = selection(reason, source_topic, since, until, limit)
        summary, stopped = replay_letters(stack_settings(), chosen, dry_run)
        if as_json:
            print_json({**summary.as_json(), "stopped_early": stopped})
        else:
            print_summary(summary)
        if stopped is not None:
            err.print(f"[red]stopped early:[/red] {escape(stopped)}")
        if summary.failed or (stopped is not None and stopped != "interrupted"):
            raise typer.Exit(1)
        if stopped is not None:
            raise typer.Exit(130)
