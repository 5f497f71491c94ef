"""The run queue: first come, first served, with each waiting run's position and wait estimate.

Every edit, from the page or the API, takes a ticket (:meth:`RunQueue.join`) naming
its model and its work (:attr:`gooddrag.ui.progress.RunProgress.total_work`, in
UNet passes), and waits until it is at the front (:meth:`RunQueue.wait`), hearing
its position and an estimate of the wait on the way; it leaves the queue when it
ends, which lets the next one start.

The estimate comes from measured runs only: the last few finished runs on a
model give its seconds for a given work (:meth:`RunQueue.predict`), and each
load of a model its loading time. A run ahead is then expected to take that
(plus the loading time when its model is not loaded), the running one less the
time it has already run. Before a run on a model has
finished, the estimate is unknown (None), never a guess: projecting from the
running run's own progress was off by 10x (a cached LoRA makes its first
percent arrive at once).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .progress import RunProgress


@dataclass(eq=False)
class Ticket:
    """One run's place in the queue."""

    model: str | None = None
    work: float = 1.0
    """Its work in the units of :attr:`RunProgress.total_work`."""
    started: float | None = field(default=None, repr=False)
    """time.monotonic() when it started running (after its model was loaded)."""


class RunQueue:
    """First come, first served. ``is_loaded(model)`` says whether a model is loaded (its
    loading time is then not part of a wait); ``history``: finished runs per model the estimates use."""

    def __init__(self, history: int = 5, is_loaded: Callable[[str | None], bool] | None = None):
        self._cond = threading.Condition()
        self._tickets: list[Ticket] = []
        self._runs: dict[str | None, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=history))
        self._loads: dict[str | None, float] = {}
        self._is_loaded = is_loaded or (lambda model: True)
        self.current: RunProgress | None = None
        """Progress of the run at the front, once it has started."""

    def join(self, model: str | None = None, work: float = 1.0) -> Ticket:
        ticket = Ticket(model, float(work))
        with self._cond:
            self._tickets.append(ticket)
        return ticket

    def started(self, ticket: Ticket, now: float | None = None) -> None:
        """``ticket``'s run has its model loaded and starts its work now."""
        ticket.started = time.monotonic() if now is None else now

    def loaded(self, model: str | None, seconds: float) -> None:
        """Loading ``model`` took ``seconds`` (a later wait on it counts this while it is not loaded)."""
        with self._cond:
            self._loads[model] = seconds

    def leave(self, ticket: Ticket, seconds: float | None = None) -> None:
        """``ticket``'s run is over (or was dropped); ``seconds``: how long its work took
        (model loading excluded), for estimates; None for a run that did not finish."""
        with self._cond:
            if self._tickets and self._tickets[0] is ticket:
                self.current = None
            if ticket in self._tickets:
                self._tickets.remove(ticket)
            if seconds is not None and ticket.work > 0:
                self._runs[ticket.model].append((ticket.work, seconds))
            self._cond.notify_all()

    def ahead(self, ticket: Ticket) -> int:
        """How many runs are before ``ticket`` (0: its turn)."""
        with self._cond:
            return self._tickets.index(ticket) if ticket in self._tickets else 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._tickets)

    def predict(self, model: str | None, work: float) -> float | None:
        """Expected seconds for ``work`` on ``model`` from its recent finished runs: a straight line
        (a fixed part per run plus a part per unit, least squares) once they differ in work, else
        their pooled seconds per unit; None before one finished. (The fixed part is real: saving,
        decoding and tracking cost a short run relatively more, up to 1.6x per unit here.)"""
        with self._cond:
            runs = list(self._runs.get(model, ()))
        if not runs:
            return None
        works = [w for w, _ in runs]
        secs = [s for _, s in runs]
        if max(works) > min(works):
            mw, ms = sum(works) / len(works), sum(secs) / len(secs)
            slope = (sum((w - mw) * (s - ms) for w, s in runs) / sum((w - mw) ** 2 for w in works))
            fixed = ms - slope * mw
            if slope > 0 and fixed >= 0:
                return fixed + slope * work
        return sum(secs) / sum(works) * work

    def duration(self, ticket: Ticket) -> float | None:
        """Expected seconds for ``ticket``'s run from its start, loading included when needed."""
        run = self.predict(ticket.model, ticket.work)
        if run is None:
            return None
        load = 0.0 if self._is_loaded(ticket.model) else self._loads.get(ticket.model, 0.0)
        return load + run

    def estimate(self, ticket: Ticket, now: float | None = None) -> float | None:
        """Seconds until ``ticket``'s run starts; 0 at the front; None when a run ahead of it
        is on a model with no finished run yet."""
        now = time.monotonic() if now is None else now
        with self._cond:
            before = self._tickets[:self._tickets.index(ticket)] if ticket in self._tickets else []
        total = 0.0
        for i, other in enumerate(before):
            run = self.predict(other.model, other.work)
            if run is None:
                return None
            if i == 0 and other.started is not None:  # running: what is left of it
                total += max(0.0, run - (now - other.started))
            else:
                total += self.duration(other)
        return total

    def wait(self, ticket: Ticket, on_wait: Callable[[int, float | None], None] | None = None,
             poll: float = 0.5) -> None:
        """Block until ``ticket`` is at the front, calling ``on_wait(ahead, estimate)`` about
        every ``poll`` seconds meanwhile (it may raise to give up: the caller leaves)."""
        while True:
            with self._cond:
                ahead = self._tickets.index(ticket)
                if ahead == 0:
                    return
            if on_wait is not None:
                on_wait(ahead, self.estimate(ticket))
            with self._cond:
                if self._tickets.index(ticket) != 0:
                    self._cond.wait(poll)
