"""One progress figure for a whole run, and what a queued run is told (pure, no gradio).

A run goes through stages that never go backwards: loading the model, the LoRA,
DDIM inversion, drag and denoise (AIDD interleaves the two: the drag at a
timestep, then that timestep's denoising step), saving. :class:`RunProgress`
turns the pipeline's step events into one fraction that never decreases, a
line naming the stage and the step within it, and the elapsed time since the
run started (it never restarts). Each phase weighs what it costs, counted in
UNet passes: a LoRA step is a forward and backward pass per image of the batch,
an inversion step one forward, a drag round ``max_drag_per_track`` forward and
backward passes, a denoising step one pass on a batch of two.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

STAGES = ("Loading the model", "LoRA", "DDIM inversion", "Drag and denoise", "Saving")
"""Stage names, in order."""


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


@dataclass
class RunProgress:
    """Progress of one run from its pipeline events (``StepEvent``-like objects).

    config: the run's DragConfig (for the phase sizes and weights).
    """

    config: object
    started: float = field(default_factory=time.monotonic)
    stage: int = 0
    detail: str = "starting"
    done: dict = field(default_factory=lambda: {"lora": 0, "inversion": 0, "drag": 0, "denoise": 0})
    size: dict = field(default_factory=dict)
    fraction: float = 0.0
    step_kind: str = "loading"
    """The kind of the latest step: loading, lora, inversion, drag, denoise, saving."""

    def __post_init__(self):
        c = self.config
        n_inv = max(1, round(c.num_inference_steps * c.inversion_strength))
        self.size = {"lora": c.lora_steps, "inversion": n_inv, "drag": c.drag_end_step * c.track_per_step,
                     "denoise": n_inv}
        self.weight = {"lora": 3 * c.lora_batch_size, "inversion": 1, "drag": 3 * c.max_drag_per_track,
                       "denoise": 2}
        if getattr(c, "max_drag_steps", None):  # FreeDrag: its drag events count Adam steps of a budget
            self.size["drag"], self.weight["drag"] = c.max_drag_steps, 3

    # -- updates
    def loading(self) -> None:
        self.stage, self.detail, self.step_kind = 0, "loading the model", "loading"

    def saving(self) -> None:
        self.stage, self.detail, self.step_kind = max(self.stage, 4), "writing the result folder", "saving"
        self._credit_before("saving")
        self._update()

    def update(self, ev) -> None:
        """Take one pipeline event (phase, step, total, and for drag/denoise ``timestep``)."""
        phase, step, total = ev.phase, int(ev.step), max(1, int(ev.total))
        if phase not in self.done:
            return
        self.size[phase] = total if phase != "drag" else self.size["drag"]
        self.done[phase] = max(self.done[phase], step)
        self.step_kind = phase
        self._credit_before(phase)
        c = self.config
        if phase == "lora":
            self.stage, self.detail = max(self.stage, 1), f"LoRA training step {step} of {total}"
        elif phase == "inversion":
            self.stage, self.detail = max(self.stage, 2), f"DDIM inversion step {step} of {total}"
        else:
            k = getattr(ev, "timestep", None)
            if phase == "drag" and getattr(ev, "tracking", None) == "search":  # FreeDrag: Adam steps
                self.detail = f"drag step {step} of at most {total}"
            elif phase == "drag":
                k = (max(step, 1) - 1) // max(1, c.track_per_step) if k is None else k
                self.detail = f"drag at timestep {k + 1} of {c.drag_end_step}"
            else:
                k = step - 1 if k is None else k
                # the drag work of this and earlier timesteps is over (it may have stopped early)
                per_timestep = self.size["drag"] / max(1, c.drag_end_step)
                self.done["drag"] = max(self.done["drag"], min(self.size["drag"], round((k + 1) * per_timestep)))
                self.detail = f"denoise step {k + 1} of {total}"
            self.stage = max(self.stage, 3)
        self._update()

    def _credit_before(self, phase: str) -> None:
        """Phases before ``phase`` are over (a cached LoRA sends no LoRA events)."""
        order = ("lora", "inversion", "drag", "denoise", "saving")
        for earlier in order[:order.index(phase)]:
            if earlier == "drag" and phase == "denoise":
                continue  # interleaved with the denoising: credited per timestep in update()
            self.done[earlier] = self.size[earlier]

    def _update(self) -> None:
        total = self.total_work or 1
        done = sum(self.weight[p] * min(self.done[p], self.size[p]) for p in self.done)
        self.fraction = max(self.fraction, min(1.0, done / total))

    # -- reading
    @property
    def total_work(self) -> float:
        """The whole run's work in UNet passes (the phases' sizes times their weights)."""
        return float(sum(self.weight[p] * self.size[p] for p in self.done))

    def elapsed(self, now: float | None = None) -> float:
        return (now if now is not None else time.monotonic()) - self.started

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left, projected from the time so far (None before 5% is done)."""
        if self.fraction < 0.05:
            return None
        return self.elapsed(now) * (1 - self.fraction) / self.fraction

    def text(self, now: float | None = None) -> str:
        """E.g. ``Stage 4 of 5, drag and denoise: drag at timestep 2 of 10 · 45% · 12 s``."""
        stage = STAGES[self.stage].lower()
        detail = "" if self.detail == stage else f": {self.detail}"
        return (f"Stage {self.stage + 1} of {len(STAGES)}, {stage}{detail} · "
                f"{_percent(self.fraction)} · {self.elapsed(now):.0f} s")


def wait_text(ahead: int, eta: float | None) -> str:
    """What a queued run is told: how many runs are before it and about how long."""
    runs = "1 run" if ahead == 1 else f"{ahead} runs"
    when = (f"about {eta:.0f} s to wait" if eta is not None
            else "wait unknown until a run on this model has finished here")
    return f"Queued: {runs} ahead of yours (position {ahead + 1}); {when}."


def status_html(text: str, fraction: float | None = None, kind: str = "info") -> str:
    """The status area: one line and, for a running run, one progress bar."""
    bar = ""
    if fraction is not None:
        bar = (f'<progress id="run-progress" value="{100 * fraction:.1f}" max="100" '
               f'style="width:100%;height:10px"></progress>')
    return f'<div class="gd-status gd-{kind}"><span id="status-text">{html.escape(text)}</span>{bar}</div>'
