"""Durations the hub's parts report (store writes, ingests) for whoever measures them.

The stores and the staging code know nothing of Prometheus; they call ``observe`` and the
metrics of each app listen. Listeners are held weakly, so a closed app stops listening
without unregistering (tests build many apps). With no listener an observation costs a
``perf_counter`` call and an empty loop.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, float], None]

_listeners: weakref.WeakSet = weakref.WeakSet()


def listen(listener: Listener) -> None:
    """Tell ``listener(kind, seconds)`` of every observation; keep a reference to it."""
    _listeners.add(listener)


def observe(kind: str, seconds: float) -> None:
    for listener in list(_listeners):
        listener(kind, seconds)


@contextmanager
def timed(kind: str) -> Iterator[None]:
    """Observe how long the block took, if it finished without an error."""
    started = time.perf_counter()
    yield
    observe(kind, time.perf_counter() - started)
