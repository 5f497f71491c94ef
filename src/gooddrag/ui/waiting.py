"""The run queue: first come, first served, with each waiting run's position and wait estimate.

Every edit, from the page or the API, takes a ticket (:meth:`RunQueue.join`) and
waits until it is at the front (:meth:`RunQueue.wait`), hearing its position
and an estimate of the wait on the way; it leaves the queue when it ends, which
lets the next one start. The estimate is the running edit's projected remaining
time plus, for each run between, the mean length of the last few runs (or the
running one's projected length before any run has finished).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

from .progress import RunProgress


class RunQueue:
    def __init__(self, history: int = 5):
        self._cond = threading.Condition()
        self._tickets: list[object] = []
        self._durations: deque[float] = deque(maxlen=history)
        self.current: RunProgress | None = None
        """Progress of the run at the front, once it has started."""

    def join(self) -> object:
        ticket = object()
        with self._cond:
            self._tickets.append(ticket)
        return ticket

    def leave(self, ticket: object, seconds: float | None = None) -> None:
        """``ticket``'s run is over (or was dropped); ``seconds``: how long it ran, for estimates."""
        with self._cond:
            if self._tickets and self._tickets[0] is ticket:
                self.current = None
            if ticket in self._tickets:
                self._tickets.remove(ticket)
            if seconds is not None:
                self._durations.append(seconds)
            self._cond.notify_all()

    def ahead(self, ticket: object) -> int:
        """How many runs are before ``ticket`` (0: its turn)."""
        with self._cond:
            return self._tickets.index(ticket) if ticket in self._tickets else 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._tickets)

    def estimate(self, ahead: int, now: float | None = None) -> float | None:
        """Seconds until a run with ``ahead`` runs before it starts; None when nothing is known yet."""
        if ahead <= 0:
            return 0.0
        mean = statistics.fmean(self._durations) if self._durations else None
        current = self.current
        remaining = current.remaining(now) if current is not None else None
        per_run = mean
        if per_run is None and remaining is not None:
            per_run = current.elapsed(now) + remaining
        if remaining is None:
            remaining = mean
        if remaining is None or per_run is None:
            return None
        return remaining + (ahead - 1) * per_run

    def wait(self, ticket: object, on_wait: Callable[[int, float | None], None] | None = None,
             poll: float = 0.5) -> None:
        """Block until ``ticket`` is at the front, calling ``on_wait(ahead, estimate)`` about
        every ``poll`` seconds meanwhile (it may raise to give up: the caller leaves)."""
        while True:
            with self._cond:
                ahead = self._tickets.index(ticket)
                if ahead == 0:
                    return
            if on_wait is not None:
                on_wait(ahead, self.estimate(ahead, time.monotonic()))
            with self._cond:
                if self._tickets.index(ticket) != 0:
                    self._cond.wait(poll)
