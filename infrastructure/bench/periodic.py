"""A sampler that runs on a daemon thread, once every `interval` seconds, between start() and stop()."""

from __future__ import annotations

import threading
from typing import Self


class Periodic:
    interval: float

    def sample(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
