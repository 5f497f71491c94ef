"""An edit started from the page: a worker thread runs it, the page's generator reports it.

:meth:`PageRuns.run` is the Run button's handler. It checks the inputs, starts
:meth:`gooddrag.ui.engine.Engine.edit` in a thread whose step callback puts
events (status, progress, preview frames, the end) on a queue, and turns each
event into the page's outputs as it arrives. Cancel sets the run's flag; the
callback raises :class:`~gooddrag.ui.engine.RunCancelled` at the next step.
"""

# No ``from __future__ import annotations``: gradio reads the handler's annotations.
import logging
import queue
import threading
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..errors import GoodDragError
from .engine import EditOutput, Engine, RunCancelled
from .handlers import PHASE_TEXT, message, session_of
from .state import display_scale, draw_overlay, interleave_points, make_config, mask_from_editor, run_problem, \
    to_display

logger = logging.getLogger(__name__)

PREVIEW_EVERY = 5
"""Live preview: every denoising step during the drag timesteps, then every this many."""
OUTPUTS = 6
"""The run's outputs: status, live result, before/after, GIF, zip, result state."""


def _status_only(text: str) -> tuple:
    return (text, *(gr.skip(),) * (OUTPUTS - 1))


class PageRuns:
    """Runs started from the page, one worker thread each."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def run(self, image, editor, model, preset, prompt, vae, dtype, show_final_points,
            request: gr.Request = None, progress=gr.Progress(), **settings):
        """Run from the page: yields (status, live result, before/after, GIF, zip, result state)."""
        points = self.engine.points(session_of(request))
        mask = mask_from_editor(editor, image.size) if image is not None else None
        problem = run_problem(image, points, mask)
        if problem:
            gr.Warning(problem)
            yield _status_only(f"**Cannot run:** {problem}")
            return
        try:
            drag_end = make_config(preset, settings).drag_end_step
        except GoodDragError as err:
            gr.Warning(str(err))
            yield _status_only(f"**Cannot run:** {err}")
            return
        session = session_of(request)
        flags = self.engine.start_run(session)
        events: queue.Queue = queue.Queue()
        state: dict[str, Any] = {"handles": None, "drag_end": drag_end}
        job = dict(image=image, points=points, mask=mask, prompt=prompt, preset=preset, settings=settings,
                   model=model, dtype=dtype, vae=vae)
        thread = threading.Thread(target=self._worker, args=(session, flags, job, events, state),
                                  name="gooddrag-ui-run", daemon=True)
        thread.start()
        progress(0, desc="Starting")
        try:
            yield from self._report(image, events, thread, state, show_final_points, progress)
        finally:
            if thread.is_alive():  # closed early (page closed, cancelled): stop the worker
                flags[0].set()

    def _callback(self, image, cancel, events, state):
        def callback(ev):
            if cancel.is_set():
                raise RunCancelled()
            if ev.handle_points is not None:
                state["handles"] = ev.handle_points
            if ev.phase == "denoise" and ev.latents is not None and (
                ev.step <= state["drag_end"] or ev.step % PREVIEW_EVERY == 0
            ):
                frame = state["pipe"].decode_latents(ev.latents)[0].resize(image.size, Image.LANCZOS)
                events.put(("preview", frame, ev.step, ev.total))
            events.put(("progress", ev.phase, ev.step, ev.total))

        return callback

    def _worker(self, session, flags, job, events, state):
        try:
            out = self.engine.edit(
                job["image"], job["points"], job["mask"], prompt=job["prompt"], preset=job["preset"],
                settings=job["settings"], model=job["model"], dtype=job["dtype"], vae=job["vae"], source="ui",
                callback=self._callback(job["image"], flags[0], events, state),
                on_status=lambda text: events.put(("status", text)),
                on_loaded=lambda pipe: state.__setitem__("pipe", pipe),
            )
            events.put(("done", out))
        except BaseException as err:  # noqa: BLE001 - reported on the page
            if not isinstance(err, (GoodDragError, RunCancelled)):
                logger.exception("edit failed")
            events.put(("error", err))
        finally:
            self.engine.end_run(session, flags)

    def _report(self, image, events, thread, state, show_final_points, progress):
        """The page's outputs for each event of the worker, until it ends."""
        s = display_scale(image.width, image.height)
        while True:
            try:
                item = events.get(timeout=0.2)
            except queue.Empty:
                if not thread.is_alive() and events.empty():
                    yield _status_only("**Error:** the run stopped unexpectedly.")
                    return
                continue
            kind = item[0]
            if kind == "status":
                progress(0, desc=item[1])
                yield _status_only(item[1])
            elif kind == "progress":
                _, phase, step, total = item
                progress((step, total), desc=PHASE_TEXT.get(phase, phase), unit="steps")
            elif kind == "preview":
                _, frame, step, total = item
                final = state["handles"]
                view = draw_overlay(frame, [], s, final_points=final) if final is not None else to_display(frame, s)
                yield (f"Denoising: step {step}/{total} (live preview).", view, *(gr.skip(),) * (OUTPUTS - 2))
            elif kind == "error":
                err = item[1]
                if isinstance(err, RunCancelled):
                    yield _status_only("Run cancelled.")
                else:
                    gr.Warning(message(err))
                    yield _status_only(f"**Error:** {message(err)}")
                return
            elif kind == "done":
                yield self._finished(image, item[1], s, show_final_points)
                return

    def _finished(self, image, out: EditOutput, s: int, show_final_points: bool) -> tuple:
        r = out.result
        plain = to_display(r.image, s)
        with_points = draw_overlay(r.image, interleave_points(r.initial_handle_points, r.target_points), s,
                                   final_points=r.handle_points)
        result = {"image": r.image, "plain": plain, "with_points": with_points, "folder": str(out.folder)}
        dist = ", ".join(f"{d:.1f}" for d in np.linalg.norm(r.handle_points - r.target_points, axis=1))
        text = (f"Done in {r.timings['total']:.1f} s: result `{out.folder.name}` "
                f"(handle-to-target distance after the drag: {dist} px; stop: {r.stats.stop_reason}; "
                f"LoRA: {r.lora.get('source')}).")
        return (text, with_points if show_final_points else plain, (to_display(image, s), plain),
                self.engine.display_gif(out.folder, s),
                gr.update(value=self.engine.served_copy(out.zip_path), interactive=True), result)
