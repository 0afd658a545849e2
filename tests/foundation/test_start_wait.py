"""`rtap up` waits for a starting service as long as it shows progress (storage re-sorting its raw table)."""

from __future__ import annotations

import itertools
import time

from infrastructure.local.process import wait_until, wait_while_progressing


def test_a_start_that_keeps_progressing_is_waited_for_beyond_the_stall_timeout():
    started = time.monotonic()
    ready = lambda: time.monotonic() - started > 1.5  # noqa: E731
    ticks = itertools.count()
    assert not wait_until(ready, 0.5)
    assert wait_while_progressing(ready, lambda: next(ticks), stall=0.5, limit=10)


def test_a_start_that_stalls_is_given_up_after_the_stall_timeout():
    started = time.monotonic()
    assert not wait_while_progressing(lambda: False, lambda: "same log size", stall=0.5, limit=10)
    assert time.monotonic() - started < 2


def test_a_start_that_never_ends_is_given_up_after_the_limit():
    started = time.monotonic()
    ticks = itertools.count()
    assert not wait_while_progressing(lambda: False, lambda: next(ticks), stall=0.5, limit=1.0)
    assert 1.0 <= time.monotonic() - started < 3
