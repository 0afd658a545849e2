"""The SSE stream pushes a window written after the client connected."""

from __future__ import annotations

import queue
import threading
import time

import httpx
import orjson
import pytest

from tests.cache.conftest import event_record, produce, window_base

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def read_stream(url: str, headers: dict, params: dict, lines: queue.Queue, stop: threading.Event) -> None:
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", url, headers=headers, params=params) as response,
    ):
        lines.put(("status", response.status_code, response.headers.get("content-type")))
        try:
            for line in response.iter_lines():
                lines.put(("line", line))
                if stop.is_set():
                    return
        except httpx.RemoteProtocolError:  # the service shut down mid-stream; EventSource clients reconnect
            lines.put(("closed", "cut"))
            return
        lines.put(("closed", "ended"))


def test_stream_receives_window_written_after_connect(cache, kafka):
    base = window_base()
    lines: queue.Queue = queue.Queue()
    stop = threading.Event()
    url = f"{cache.url}/v1/jobs/event_metrics/stream"
    reader = threading.Thread(
        target=read_stream,
        daemon=True,
        args=(url, dict(cache.client.headers), {"event_type": "streamed"}, lines, stop),
    )
    reader.start()
    assert lines.get(timeout=10)[1:] == (200, "text/event-stream; charset=utf-8")
    assert lines.get(timeout=10) == ("line", ": subscribed")

    produce(kafka, "event_metrics", [event_record(base, "other_type", "desktop", 1, 1)])
    pushed = event_record(base, "streamed", "mobile", 4, 2)
    produce(kafka, "event_metrics", [pushed])
    events = []
    while not events:
        kind, *rest = lines.get(timeout=20)
        if kind == "line" and rest[0].startswith("data: "):
            events.append(orjson.loads(rest[0][len("data: ") :]))
    stop.set()
    assert events == [pushed], "the filter must drop the other_type window"


def test_stop_with_an_open_stream_is_prompt_and_clean(cache):
    """Runs last in this module: an idle SSE client must not hold the service's shutdown hostage."""
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=read_stream,
        daemon=True,
        args=(
            f"{cache.url}/v1/jobs/event_metrics/stream",
            dict(cache.client.headers),
            {},
            lines,
            threading.Event(),
        ),
    )
    reader.start()
    assert lines.get(timeout=10)[1] == 200
    assert lines.get(timeout=10) == ("line", ": subscribed")
    started = time.monotonic()
    cache.service.stop()
    assert time.monotonic() - started < 10, (
        "SIGTERM should end the service within its graceful-shutdown bound"
    )
    assert cache.service.pid() is None
    reader.join(timeout=10)
    assert not reader.is_alive(), "the open stream was not closed by the shutdown"
    assert list(lines.queue)[-1][0] == "closed", list(lines.queue)[-3:]
