"""A task run every few seconds in a daemon thread: checkpoints, sweeps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Run ``task`` every ``interval_s`` seconds until ``stop()``.

    A run that fails is logged and the next tick tries again: a full disk must not end a
    checkpoint or sweep loop for good.
    """

    def __init__(self, name: str, interval_s: float, task: Callable[[], object]):
        self.name = name
        self.interval_s = interval_s
        self.task = task
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.task()
            except Exception:
                log.exception("%s failed; trying again in %s s", self.name, self.interval_s)
