"""What the page's events do: uploads, examples, clicks, the mask, presets, the API.

:class:`Handlers` holds what every event needs (the engine, the limits, the
examples, the settings boxes) and has one method per event; the page
(:mod:`.page`) wires them to its components. The long-running edit from the page
is :class:`gooddrag.ui.runs.PageRun`.
"""

# No ``from __future__ import annotations``: gradio reads the handlers' annotations
# (gr.SelectData, gr.Request) at run time.
import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..methods import presets
from ..methods.config import METHODS, PRESETS
from ..errors import GoodDragError
from ..models.names import size_warning
from ..io.options import METHOD_SETTINGS
from ..io.samples import fit_mask, load_mask
from .engine import Engine
from .examples import Example
from .progress import status_html, wait_text
from .state import (
    MAIN_SETTINGS,
    add_point,
    clear_points,
    default_preset,
    describe_mask,
    describe_points,
    load_upload,
    make_config,
    mask_from_editor,
    mask_from_layers,
    parse_settings,
    points_from_text,
    method_choices,
    preset_for_model,
    undo_point,
)
from .views import click_to_image, display_scale, display_size, draw_overlay, mask_layer, to_display

logger = logging.getLogger(__name__)



def settings_spec():
    """(name, type, help, is_main) for each setting the page shows, in ``gooddrag edit``'s order."""
    spec = [(name, typ, text, name in MAIN_SETTINGS) for _, name, typ, text in METHOD_SETTINGS]
    spec.append(("seed", int, "seed of the LoRA's noise and timesteps", False))
    main = sorted((s for s in spec if s[3]), key=lambda s: MAIN_SETTINGS.index(s[0]))
    return main + [s for s in spec if not s[3]]


def session_of(request) -> str:
    """The browser session's id (``gr.Request.session_hash``); "local" outside a request."""
    return getattr(request, "session_hash", None) or "local"


_SERVER_PATH = re.compile(r"(?<![\w.~/-])(?:~|[A-Za-z]:)?[/\\](?:[^\s'\"/\\,;)]+[/\\]?)*")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path (``/...``, ``~/...``, ``C:\\...``) replaced by
    ``<server path>``: what a client is told names no file of the server. Hub ids
    (``owner/name``) and point lists (``1,2>3,4``) are kept."""
    return _SERVER_PATH.sub("<server path>", text)


def message(err: BaseException, paths_allowed: bool = False) -> str:
    """An exception as the one line a user sees. Unless ``paths_allowed`` (the server's
    --allow-any-model, a single local user), it names no server path, and an unexpected
    error says only its kind (the details go to the server log)."""
    if isinstance(err, GoodDragError):
        return str(err) if paths_allowed else redact_paths(str(err))
    if type(err).__name__ == "OutOfMemoryError":
        return "out of GPU memory; try dtype fp16, a smaller resolution or LoRA batch size 1"
    if not paths_allowed:
        return f"internal error ({type(err).__name__}); the details are in the server log"
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


def file_path(value) -> str:
    """A gr.File value (a path, or a dict with one) -> the path."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return str(value)


ECHO_WINDOW = 5.0
"""Seconds after the server sets the mask editor during which a change event carrying a mask
from before that is taken for a late report of the old value, not for the user's work."""


class EditorSets:
    """The masks each session's editor reported and the server put into it, to spot late reports.

    The editor reports a change some time after it was drawn (it uploads its layers first); when
    the server sets a new value meanwhile (Clear mask just after a stroke or an example), the
    report of the old value can arrive last. Taking it would show a mask summary and points view
    that the editor no longer shows. A report is late when, within ECHO_WINDOW s of the server's
    last set, it carries a mask seen before that set (server-set or painted) and not the set one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: dict[str, list] = {}

    @staticmethod
    def key(mask: np.ndarray | None):
        return None if mask is None or not np.any(mask) else (np.shape(mask), hashlib.sha1(
            np.packbits(np.asarray(mask, dtype=bool)).tobytes()).hexdigest())

    def _add(self, session: str, mask, by_server: bool) -> None:
        with self._lock:
            self._events[session] = (self._events.get(session, []) + [(self.key(mask), time.monotonic(),
                                                                         by_server)])[-16:]

    def server_set(self, session: str, mask: np.ndarray | None) -> None:
        self._add(session, mask, True)

    def reported(self, session: str, mask: np.ndarray | None) -> None:
        """The editor reported ``mask`` and it was taken."""
        self._add(session, mask, False)

    def is_late_echo(self, session: str, mask: np.ndarray | None) -> bool:
        key = self.key(mask)
        with self._lock:
            events = list(self._events.get(session, []))
        sets = [i for i, (_, _, by_server) in enumerate(events) if by_server]
        if not sets:
            return False
        last_key, last_time, _ = events[sets[-1]]
        if last_key == key or time.monotonic() - last_time > ECHO_WINDOW:
            return False
        return any(old == key for old, _, _ in events[:sets[-1]])

    def drop(self, session: str) -> None:
        with self._lock:
            self._events.pop(session, None)


class Handlers:
    """The page's event handlers (one method per event)."""

    def __init__(self, engine: Engine, *, default_model: str, max_bytes: int, max_pixels: int,
                 examples: Sequence[Example], setting_defaults: dict[str, Any] | None = None):
        self.engine = engine
        self.default_model = default_model
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.examples = list(examples)
        self.spec = settings_spec()
        self.fixed = dict(setting_defaults or {})
        self.editor_sets = EditorSets()

    def preset_value(self, preset: str, name: str):
        """A settings box's value under ``preset``: the fixed demo/test value where the preset's method
        takes it (a baseline refuses more than one drag timestep and the settings it does not read),
        else the preset's."""
        if name in self.fixed:
            try:
                make_config(preset, {name: self.fixed[name]})
                return self.fixed[name]
            except GoodDragError:
                pass
        return getattr(PRESETS[preset], name)

    # -- a new input picture
    def new_input(self, session: str, image: Image.Image, mask: np.ndarray | None, points, note: str,
                  model: str | None = None):
        """Outputs for a new input image: state, editor, points view and texts."""
        s = display_scale(image.width, image.height)
        points = self.engine.update_points(session, lambda _: points)
        text = f"{note} ({image.width}x{image.height} px)."
        misfit = self.misfit(model, image)
        if misfit:  # in the status line only: toasts stayed on screen after they stopped being true
            text += f" Warning: {misfit}."
        self.editor_sets.server_set(session, mask)
        return (image, self.editor_value(image, mask), draw_overlay(image, points, s, mask),
                describe_points(points), status_html(text), describe_mask(mask))

    def editor_value(self, image: Image.Image, mask: np.ndarray | None) -> dict:
        """The mask editor's value: the picture as its fixed background, the mask as its layer."""
        s = display_scale(image.width, image.height)
        layer = mask_layer(mask, s)
        return {"background": to_display(image, s), "layers": [layer] if layer is not None else [],
                "composite": None}

    def misfit(self, model: str | None, image: Image.Image | None) -> str | None:
        """A warning when the picture does not fit the model's native size and subject."""
        if image is None:
            return None
        return size_warning(model or self.default_model, image.width, image.height)

    def on_upload(self, path, model=None, request: gr.Request = None):
        if path is None:
            return (gr.skip(),) * 6
        try:
            image = load_upload(path, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        except GoodDragError as err:
            return (*(gr.skip(),) * 4, status_html(f"Upload refused: {err}", kind="error"), gr.skip())
        return self.new_input(session_of(request), image, None, [], f"Loaded {Path(path).name}", model)

    def on_example(self, model=None, evt: gr.SelectData = None, request: gr.Request = None):
        ex = self.examples[evt.index]
        return self.new_input(session_of(request), ex.image, ex.mask, ex.points, f"Example {ex.name}",
                              model) + (ex.prompt,)

    # -- points
    def points_view(self, image, points, editor):
        """The points view and the mask line for the editor value an event carried: the mask a run
        started now would use (so the two never disagree after Clear points or Undo)."""
        s = display_scale(image.width, image.height)
        try:
            mask = mask_from_editor(editor, image.size)
        except Exception:  # noqa: BLE001 - a preview only
            return draw_overlay(image, points, s, None), gr.skip()
        return draw_overlay(image, points, s, mask), describe_mask(mask)

    def on_click(self, image, editor, evt: gr.SelectData, request: gr.Request = None):
        if image is None:
            return gr.skip(), gr.skip(), "Upload an image or pick an example first."
        xy = click_to_image(evt.index, display_scale(image.width, image.height), image.size)
        points = self.engine.update_points(session_of(request), lambda old: add_point(old, xy))
        return *self.points_view(image, points, editor), describe_points(points)

    def on_undo(self, image, editor, request: gr.Request = None):
        points = self.engine.update_points(session_of(request), undo_point)
        if image is None:
            return gr.skip(), gr.skip(), describe_points(points)
        return *self.points_view(image, points, editor), describe_points(points)

    def on_clear(self, image, editor, request: gr.Request = None):
        self.engine.update_points(session_of(request), lambda _: clear_points())
        if image is None:
            return gr.skip(), gr.skip(), describe_points([])
        return *self.points_view(image, [], editor), describe_points([])

    # -- mask, model, preset, result view
    def on_mask_change(self, image, editor, request: gr.Request = None):
        points = self.engine.points(session_of(request))
        if image is None or not editor:
            return gr.skip(), gr.skip()
        s = display_scale(image.width, image.height)
        bg = editor.get("background")
        if bg is not None and np.shape(bg)[1::-1] != display_size(image.size, s):
            return gr.skip(), gr.skip()  # a change from before the new input arrived
        mask = mask_from_editor(editor, image.size)
        if self.editor_sets.is_late_echo(session_of(request), mask):
            return gr.skip(), gr.skip()
        self.editor_sets.reported(session_of(request), mask)
        return draw_overlay(image, points, s, mask), describe_mask(mask)

    def on_model_change(self, model, preset, image):
        """The preset follows the model; the status says whether the picture fits the new model
        (replacing what it said about the old one)."""
        misfit = self.misfit(model, image)
        text = f"Model {model}." + (f" Warning: {misfit}." if misfit else "")
        return gr.update(choices=method_choices(model), value=preset_for_model(model, preset)), status_html(text)

    def on_upload_click(self):
        """The upload button was pressed: what the status said about an earlier file goes (an upload
        over the size limit is refused by the browser before any handler runs)."""
        return status_html(f"Choose a picture: at most {self.max_bytes / 2**20:g} MB and "
                           f"{self.max_pixels:,} pixels.")

    def on_clear_mask(self, image, request: gr.Request = None):
        """Clear mask (and the editor's own clear): the picture stays, the mask goes."""
        if image is None:
            return gr.skip(), gr.skip(), describe_mask(None)
        points = self.engine.points(session_of(request))
        s = display_scale(image.width, image.height)
        self.editor_sets.server_set(session_of(request), None)
        return self.editor_value(image, None), draw_overlay(image, points, s), describe_mask(None)

    def on_preset_change(self, preset):
        return [gr.update(value=self.preset_value(preset, name)) for name, *_ in self.spec]

    def on_show_points(self, show, result):
        if not result:
            return gr.skip()
        return result["with_points"] if show else result["plain"]

    def on_use_result(self, result, editor, request: gr.Request = None):
        if not result:
            return (*(gr.skip(),) * 4, status_html("No result yet: run an edit first.", kind="error"), gr.skip())
        image = result["image"]
        s = display_scale(image.width, image.height)
        self.engine.update_points(session_of(request), lambda _: clear_points())
        layers = list((editor or {}).get("layers") or [])
        ed = {"background": to_display(image, s), "layers": layers, "composite": None}
        mask = mask_from_layers(layers, image.size)
        self.editor_sets.server_set(session_of(request), mask)
        return (image, ed, draw_overlay(image, [], s, mask), describe_points([]),
                status_html("The result is the new input; click new points."), describe_mask(mask))

    def on_unload(self, request: gr.Request = None):
        self.engine.drop_session(session_of(request))
        self.editor_sets.drop(session_of(request))

    def on_cancel(self, request: gr.Request = None):
        stopped = self.engine.cancel(session_of(request))
        off = gr.update(interactive=False)
        if stopped is None:
            return status_html("Cancelled."), off  # a run still queued in gradio is dropped by gradio
        if stopped:
            return status_html("Run cancelled."), off
        return status_html("Cancelling: the run stops at its next step..."), off

    # -- the API endpoint /drag
    def api_inputs(self, image, mask, points):
        """The API's files and points, checked: (image, mask or None, points)."""
        if not image:
            raise GoodDragError("no image given")
        img = load_upload(file_path(image), max_bytes=self.max_bytes, max_pixels=self.max_pixels, what="image")
        m = None
        if mask:
            mask_path = file_path(mask)
            load_upload(mask_path, max_bytes=self.max_bytes, max_pixels=self.max_pixels, what="mask")
            m = load_mask(mask_path)
            if m.shape != (img.height, img.width):
                m = fit_mask(m, (img.height, img.width))
        return img, m, points_from_text(points)

    def api_drag(self, image, mask, points, prompt="", preset=None, settings="", model=None,
                 progress=gr.Progress()):
        """Drag edit. image: image file; mask: image file, white = may change (optional);
        points: "x,y>x,y; ..." handle>target pairs in image pixels; prompt: text; preset:
        a method (gooddrag, gooddrag-plus, dragdiffusion: its preset that fits the model) or a
        preset name (one made for another model runs as asked, with a warning in the server's
        log; default: GoodDrag's that fits the model); settings: JSON object of setting overrides, e.g. {"lora_steps": 20};
        model: one of the names the server offers (default: the server's).
        Returns the edited image (input size) and the result folder as a zip. While the
        call waits its turn, its progress says its place in the queue."""
        try:
            img, m, pts = self.api_inputs(image, mask, points)
            model = (model or "").strip() or self.default_model
            preset = (preset or "").strip() or default_preset(model)
            if preset in METHODS:  # a method: the preset that fits the model
                preset = preset_for_model(model, preset)
            if preset not in PRESETS:
                raise GoodDragError(f"unknown preset {preset!r}; choose a method ({', '.join(METHODS)}) "
                                    f"or a preset ({', '.join(PRESETS)})")
            misfit = presets.misfit(preset, presets.family_for(model))
            if misfit:
                logger.warning("API call runs %s", misfit)
            out = self.engine.edit(
                img, pts, m, prompt=prompt or "", preset=preset, settings=parse_settings(settings), model=model,
                source="api", on_wait=lambda ahead, eta: progress(0, desc=wait_text(ahead, eta)),
                on_progress=lambda p: progress(p.fraction, desc=p.text()),
            )
        except Exception as err:  # noqa: BLE001 - every failure is one line for the client
            text = message(err, paths_allowed=self.engine.allow_any_model)
            if isinstance(err, GoodDragError):  # the caller is told: one line in the log, no traceback
                logger.warning("API call refused: %s", text)
            else:
                logger.exception("API edit failed")
            raise gr.Error(text, print_exception=False) from None
        return out.result.image, self.engine.served_copy(out.zip_path)
