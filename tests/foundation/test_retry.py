"""until_stopped: a sink's write is retried until it succeeds, whatever the error looks like."""

from __future__ import annotations

import threading

import pytest

from shared.retry import until_stopped


@pytest.mark.parametrize("error", [TimeoutError(), OSError("first line\nsecond line"), RuntimeError("")])
def test_a_failing_step_is_retried_until_it_succeeds(error):
    attempts: list[int] = []
    seen: list[BaseException] = []

    def step() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise error
        return "written"

    retrying = until_stopped(threading.Event(), "write", max_wait=0.01, on_retry=seen.append)
    assert retrying(step) == "written"
    assert len(attempts) == 3 and seen == [error, error]


def test_once_stopped_the_last_error_is_raised():
    stop = threading.Event()

    def step() -> None:
        stop.set()
        raise TimeoutError()

    with pytest.raises(TimeoutError):
        until_stopped(stop, "write", max_wait=0.01)(step)
