"""An edit started from the page: a worker thread runs it, the page's generator reports it.

:meth:`PageRuns.run` is the Run button's handler. It checks the inputs and starts
:meth:`gooddrag.ui.engine.Engine.edit` in a thread; the worker's hooks put
events on a queue (its place in the run queue while it waits, the run's progress,
predicted clean latents for the preview, the end) and the generator turns them
into the page's outputs: a status line with one progress bar for the whole run,
the preview (the input from the start, then each decoded prediction), and at the
end the result views. Cancel sets the run's flag; the worker stops at its next
step (or leaves the queue).
"""

# No ``from __future__ import annotations``: gradio reads the handler's annotations.
import logging
import queue
import threading
import time
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..errors import GoodDragError
from .engine import EditOutput, Engine, RunCancelled
from .handlers import message, session_of
from .progress import status_html, wait_text
from .shortfall import shortfall_limit_px, shortfall_message
from .state import describe_mask, interleave_points, make_config, mask_from_editor, preset_words, run_problem
from .views import display_scale, display_size, draw_overlay, image_to_display, to_display

logger = logging.getLogger(__name__)

OUTPUTS = 9
"""The run's outputs: status, live result, before/after, GIF, zip, edited.png, result state, use-result, cancel."""
REPORT_EVERY = 0.25
"""Seconds between two status updates sent to the browser."""
TICK = 1.0
"""Seconds after which the running line is sent again without news (its elapsed time counts on)."""
PREVIEW_SHARE = 0.05
"""Decoding previews may take at most this share of the run's time (they share the CPU/GPU with it)."""


def status_only(html: str, **buttons) -> tuple:
    skip = gr.skip()
    return (html, skip, skip, skip, skip, skip, skip, buttons.get("use_result", skip), buttons.get("cancel", skip))


class PageRuns:
    """Runs started from the page, one worker thread each."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def run(self, image, editor, model, preset, prompt, vae, dtype, show_final_points,
            request: gr.Request = None, **settings):
        """Run from the page: yields the outputs named in :data:`OUTPUTS`."""
        clicked = time.monotonic()  # "Done in" counts from here, queue and saving included
        points = self.engine.points(session_of(request))
        mask = mask_from_editor(editor, image.size) if image is not None else None
        try:
            problem = run_problem(image, points, mask, make_config(preset, settings))
            if problem:
                raise GoodDragError(problem)
            self.engine.location(model)
        except GoodDragError as err:
            text = self.engine_message(err)  # in the status beside Run (no toast: they piled up)
            yield status_only(status_html(f"Cannot run: {text}", kind="error"))
            return
        session = session_of(request)
        flags = self.engine.start_run(session)
        events: queue.Queue = queue.Queue()
        job = dict(image=image, points=points, mask=mask, prompt=prompt, preset=preset, settings=settings,
                   model=model, dtype=dtype, vae=vae)
        thread = threading.Thread(target=self._worker, args=(session, flags, job, events),
                                  name="gooddrag-ui-run", daemon=True)
        thread.start()
        s = display_scale(image.width, image.height)
        off = gr.update(interactive=False)
        yield (status_html(f"Starting: {preset_words(preset)}. {describe_mask(mask)}", 0.0), to_display(image, s), gr.skip(), gr.skip(), off,
               off, gr.skip(), off, gr.update(interactive=True))
        try:
            yield from self._report(image, events, thread, show_final_points, clicked, mask)
        finally:
            if thread.is_alive():  # closed early (page closed, cancelled): stop the worker
                flags[0].set()

    def engine_message(self, err: BaseException) -> str:
        return message(err, paths_allowed=self.engine.allow_any_model)

    def _worker(self, session, flags, job, events):
        cancel = flags[0]

        def check(*_):
            if cancel.is_set():
                raise RunCancelled()

        def on_step(ev):
            check()
            if ev.phase == "denoise" and ev.latents is not None:
                events.put(("latents", ev.latents.detach().clone(), ev.handle_points))
            elif ev.handle_points is not None:
                events.put(("handles", ev.handle_points))

        try:
            out = self.engine.edit(
                job["image"], job["points"], job["mask"], prompt=job["prompt"], preset=job["preset"],
                settings=job["settings"], model=job["model"], dtype=job["dtype"], vae=job["vae"], source="ui",
                callback=on_step,
                on_wait=lambda ahead, eta: (check(), events.put(("queued", ahead, eta))),
                on_progress=lambda p: events.put(("progress", p, p.step_kind)),
                on_loaded=lambda pipe: events.put(("pipe", pipe)),
            )
            events.put(("done", out))
        except BaseException as err:  # noqa: BLE001 - reported on the page
            if not isinstance(err, (GoodDragError, RunCancelled)):
                logger.exception("edit failed")
            events.put(("error", err))
        finally:
            self.engine.end_run(session, flags)

    def _report(self, image, events, thread, show_final_points, clicked, mask):
        """The page's outputs for the worker's events, until it ends (at most one status
        update per REPORT_EVERY seconds; previews within PREVIEW_SHARE of the time). The
        running line is sent again every TICK seconds without news (saving a large picture
        sends none), so its elapsed seconds keep counting."""
        view = _Preview(image)
        last_sent, pending, last_kind, running = 0.0, None, None, None
        while True:
            try:
                item = events.get(timeout=REPORT_EVERY)
            except queue.Empty:
                item = None
                if not thread.is_alive() and events.empty():
                    yield status_only(status_html("Error: the run stopped unexpectedly.", kind="error"),
                                      cancel=gr.update(interactive=False))
                    return
            kind = item[0] if item else None
            if kind in ("done", "error"):
                yield self._ending(image, item, show_final_points, clicked, mask)
                return
            now = time.monotonic()
            if kind == "queued":
                pending, running = (status_html(wait_text(item[1], item[2]), kind="queued"), None), None
            elif kind == "progress":
                running = item[1]
            elif kind is not None:
                view.take(item)
            if running is not None and (kind == "progress" or now - last_sent >= TICK):
                pending = (status_html(running.text(now), running.fraction), None)
            # a new stage or step kind is shown at once (each is named in order); steps within one
            # are shown at most every REPORT_EVERY seconds
            changed = kind == "progress" and item[2] != last_kind
            if changed:
                last_kind = item[2]
            if (pending and changed) or (now - last_sent >= REPORT_EVERY and (pending or view.due(now))):
                frame = view.frame(now)
                html = pending[0] if pending else gr.skip()
                yield (html, frame if frame is not None else gr.skip(), *(gr.skip(),) * (OUTPUTS - 2))
                last_sent, pending = now, None

    def _ending(self, image, item, show_final_points, clicked, mask) -> tuple:
        kind, value = item
        off = gr.update(interactive=False)
        if kind == "done":
            return self._finished(image, value, show_final_points, clicked, mask)
        if isinstance(value, RunCancelled):
            return status_only(status_html("Run cancelled."), cancel=off)
        text = self.engine_message(value)
        return status_only(status_html(f"Error: {text}", kind="error"), cancel=off)

    def _finished(self, image, out: EditOutput, show_final_points: bool, clicked: float, mask) -> tuple:
        r = out.result
        s = display_scale(image.width, image.height)
        plain = to_display(r.image, s)
        with_points = draw_overlay(r.image, interleave_points(r.initial_handle_points, r.target_points), s,
                                   final_points=r.handle_points, shortfall_px=shortfall_limit_px(r))
        result = {"image": r.image, "plain": plain, "with_points": with_points, "folder": str(out.folder)}
        dist = ", ".join(f"{d:.1f}" for d in np.linalg.norm(r.handle_points - r.target_points, axis=1))
        took = time.monotonic() - clicked
        queued = f", {out.queued_s:.0f} s of it queued" if out.queued_s >= 1 else ""
        text = (f"Done in {took:.1f} s from the click{queued}: result {out.folder.name} "
                f"(handle-to-target distance after the drag: {dist} px; stop: {r.stats.stop_reason}; "
                f"LoRA: {r.lora.get('source')}). {describe_mask(mask)}")
        short = shortfall_message(r)
        if short:
            text += " " + short[0].upper() + short[1:]
        edited = self.engine.served_copy(out.folder / "edited.png", f"{out.folder.name}-edited.png")
        return (status_html(text, 1.0, kind="done"), with_points if show_final_points else plain,
                (to_display(image, s), plain), self.engine.display_gif(out.folder, s),
                gr.update(value=self.engine.served_copy(out.zip_path), interactive=True),
                gr.update(value=edited, interactive=True, label=f"Download edited.png ({r.image.width}x{r.image.height})"),
                result, gr.update(interactive=True), gr.update(interactive=False))


class _Preview:
    """The live preview: the newest predicted clean latent, decoded when the time spent
    decoding stays within PREVIEW_SHARE of the run so far."""

    def __init__(self, image: Image.Image):
        self.image = image
        self.scale = display_scale(image.width, image.height)
        self.pipe: Any = None
        self.latents = None
        self.handles = None
        self.started = time.monotonic()
        self.decoding = 0.0

    def take(self, item) -> None:
        if item[0] == "pipe":
            self.pipe = item[1]
        elif item[0] == "handles":
            self.handles = item[1]
        elif item[0] == "latents":
            self.latents = item[1]
            if item[2] is not None:
                self.handles = item[2]

    def due(self, now: float) -> bool:
        return (self.latents is not None and self.pipe is not None
                and self.decoding <= PREVIEW_SHARE * (now - self.started))

    def frame(self, now: float):
        if not self.due(now):
            return None
        t0 = time.monotonic()
        # a small picture's preview is made at its size and enlarged in blocks; a large one's at the shown size
        size = self.image.size if self.scale >= 1 else display_size(self.image.size, self.scale)
        with torch.no_grad():
            frame = self.pipe.decode_latents(self.latents)[0].resize(size, Image.LANCZOS)
        self.latents = None
        self.decoding += time.monotonic() - t0
        scale = self.scale if self.scale >= 1 else 1
        if self.handles is not None:
            handles = self.handles if self.scale >= 1 else image_to_display(self.handles, self.scale)
            return draw_overlay(frame, [], scale, final_points=handles)
        return to_display(frame, scale)
