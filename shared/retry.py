"""Retrying a step a consumer must not skip (a write to its sink) until it succeeds or the consumer stops."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, stop_when_event_set, wait_exponential

from shared.logging import get_logger

log = get_logger("retry")


def until_stopped(
    stop: threading.Event,
    what: str,
    max_wait: float = 5.0,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
) -> Retrying:
    """Exponential backoff (0.1 s doubling up to max_wait), forever; once `stop` is set the last error is
    raised. on_retry gets each failure (to count it, or to report it in a readiness check)."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is None:  # not reached: tenacity sleeps only after a failed attempt
            return
        on_retry(error)
        log.warning(
            f"{what} failed, retrying",
            attempt=state.attempt_number,
            error=(str(error).partition("\n")[0] or type(error).__name__)[:300],
        )

    return Retrying(
        wait=wait_exponential(multiplier=0.1, max=max_wait),
        stop=stop_when_event_set(stop),
        before_sleep=before_sleep,
        reraise=True,
    )
