"""``gooddrag ui``: a Gradio web app for drag editing.

Upload an image (or pick an example), paint the editable region, click
handle/target points, press Run; the result folder is the one ``gooddrag
edit`` writes, downloadable as a zip. The app runs offline, on the shipped
shapes-64 model by default.

This module is imported by the command line to add its options, so gradio and
torch are only imported inside the functions that need them. The pure helpers
(points, masks, uploads, validation) come first and are tested on their own;
:class:`Engine` runs edits (pipeline cache, one run at a time, cancellation);
:func:`build_app` lays out the page; :func:`add_arguments` / :func:`run` are the
command line.

Frames: points are (x, y) pixels of the *input* image. Small images are shown
enlarged by an integer factor (``display_scale``) so the mask can be painted
and points clicked precisely; clicks and painted masks are mapped back.
"""

# No ``from __future__ import annotations``: gradio reads the handlers' annotations
# (gr.SelectData, gr.Request) at run time.
import argparse
import atexit
import json
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .errors import GoodDragError

logger = logging.getLogger(__name__)

SHAPES_MODEL = "shapes-64"
"""Name of the shipped offline model in the model box."""
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_RESULTS_DIR = "gooddrag-ui-results"
MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 4096 * 4096
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF"}
"""PIL format name -> how messages name it: the uploads accepted."""
DISPLAY_SIDE = 512
"""Images with a shorter long side are shown enlarged by an integer factor up to this."""
PREVIEW_EVERY = 5
"""Live preview: every denoising step during the drag timesteps, then every this many."""
EXAMPLE_SEEDS = ((0, "single"), (1, "multi_point"), (2, "multi_object"))
PRESET_LABELS = {
    "gooddrag": "GoodDrag",
    "dragdiffusion": "DragDiffusion",
    "shapes-gooddrag": "GoodDrag, shapes-64 settings",
    "shapes-dragdiffusion": "DragDiffusion, shapes-64 settings",
}
MAIN_SETTINGS = ("lora_steps", "drag_end_step", "track_per_step", "max_drag_per_track", "lr", "lam")
"""Settings shown up front; the others of ``gooddrag edit`` are in the Advanced accordion."""
MASK_COLOR = ("rgb(40, 200, 120)", 0.55)
BRUSH_SIZE = 20
"""Brush radius in display pixels (the editor's size menu changes it): 2.5 pixels of a 64x64 image."""


class RunCancelled(Exception):
    """Raised from the step callback when the user pressed Cancel."""


# --------------------------------------------------------------------- points


def add_point(points: Sequence[Sequence[float]] | None, xy: Sequence[float]) -> list[list[float]]:
    """A new list with ``xy`` appended. Points alternate handle, target, handle, ..."""
    return [list(p) for p in (points or [])] + [[xy[0], xy[1]]]


def undo_point(points: Sequence[Sequence[float]] | None) -> list[list[float]]:
    """A new list without the last point (empty stays empty)."""
    return [list(p) for p in (points or [])][:-1]


def clear_points() -> list[list[float]]:
    return []


def split_points(points: Sequence[Sequence[float]] | None) -> tuple[np.ndarray, np.ndarray]:
    """Alternating [handle, target, ...] -> (handles (N, 2), targets (N, 2)).

    Raises GoodDragError when there is no pair or the last handle has no target.
    """
    pts = [list(p) for p in (points or [])]
    if not pts:
        raise GoodDragError("no points: click a handle point on the image, then its target")
    if len(pts) % 2:
        x, y = pts[-1]
        raise GoodDragError(f"handle {len(pts) // 2 + 1} ({x:g}, {y:g}) has no target yet: click where it should go")
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return arr[0::2], arr[1::2]


def points_to_text(points: Sequence[Sequence[float]] | None) -> str:
    """Complete pairs as ``"x,y>x,y; x,y>x,y"`` (the ``--points`` format); a pending handle is left out."""
    pts = [list(p) for p in (points or [])]
    pairs = [pts[i:i + 2] for i in range(0, len(pts) - 1, 2)]
    return "; ".join(f"{h[0]:g},{h[1]:g}>{t[0]:g},{t[1]:g}" for h, t in pairs)


def points_from_text(text: str) -> list[list[float]]:
    """``"x,y>x,y; ..."`` -> alternating [handle, target, ...]; an error names the bad pair."""
    from .samples import parse_points

    if not text or not text.strip():
        raise GoodDragError("no points: write handle>target pairs as 'x,y>x,y; x,y>x,y'")
    handles, targets = parse_points(text)
    out: list[list[float]] = []
    for h, t in zip(handles.tolist(), targets.tolist()):
        out += [h, t]
    return out


def describe_points(points: Sequence[Sequence[float]] | None) -> str:
    """One line for the page: the pairs so far and what the next click sets."""
    pts = list(points or [])
    n = len(pts) // 2
    text = points_to_text(pts)
    if len(pts) % 2:
        x, y = pts[-1]
        pending = f"handle {n + 1} at ({x:g}, {y:g}); next click: its **target**"
        return f"{n} pair(s): {text}; {pending}" if n else pending
    if n == 0:
        return "No points yet: click a **handle** (red), then its **target** (blue)."
    return f"{n} pair(s): {text}. Next click: a new **handle**."


def describe_mask(mask: np.ndarray | None) -> str:
    """One line for the page about the painted mask."""
    if mask is None or not np.any(mask):
        return "Mask: none painted, everything may change."
    n = int(np.sum(mask))
    return f"Mask: {n} px ({n / np.size(mask):.0%} of the image) may change."


# ------------------------------------------------------------ display frames
def display_scale(width: int, height: int, side: int = DISPLAY_SIDE) -> int:
    """Integer enlargement for showing a ``width`` x ``height`` image (1 for large images)."""
    return max(1, side // max(1, width, height))


def to_display(image: Image.Image, scale: int) -> Image.Image:
    """Nearest-neighbour enlargement by ``scale`` (each input pixel a ``scale`` x ``scale`` block)."""
    image = image.convert("RGB")
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def click_to_image(xy: Sequence[float], scale: int, size: tuple[int, int]) -> list[int]:
    """A click at display pixel (x, y) -> the input pixel (x, y) it lies on; ``size`` = (W, H)."""
    W, H = size
    x = min(W - 1, max(0, int(xy[0]) // scale))
    y = min(H - 1, max(0, int(xy[1]) // scale))
    return [x, y]


def image_to_display(points: np.ndarray, scale: int) -> np.ndarray:
    """(N, 2) input (x, y) pixels -> display pixels at the centre of each pixel's block."""
    return np.asarray(points, dtype=np.float64) * scale + (scale - 1) / 2


def draw_overlay(
    image: Image.Image,
    points: Sequence[Sequence[float]] | None,
    scale: int,
    mask: np.ndarray | None = None,
    final_points: np.ndarray | None = None,
) -> Image.Image:
    """The display image with the mask tinted, each pair as handle (red) -> target (blue)
    with an arrow (:func:`gooddrag.outputs.draw_points`), a pending handle, and optionally
    final handle positions (yellow squares)."""
    from .outputs import HANDLE_COLOR, draw_points

    disp = to_display(image, scale)
    pts = [list(p) for p in (points or [])]
    n = len(pts) // 2 * 2
    arr = np.asarray(pts[:n], dtype=np.float64).reshape(-1, 2)
    mask_d = None
    if mask is not None:
        mask_d = np.repeat(np.repeat(np.asarray(mask, dtype=bool), scale, 0), scale, 1)
    out = draw_points(
        disp, image_to_display(arr[0::2], scale), image_to_display(arr[1::2], scale), mask_d,
        final_points=None if final_points is None else image_to_display(final_points, scale),
    )
    if len(pts) % 2:
        (x, y), = image_to_display(np.asarray([pts[-1]]), scale)
        r = max(3, round(min(out.size) / 100))
        ImageDraw.Draw(out).ellipse([x - r, y - r, x + r, y + r], fill=HANDLE_COLOR, outline=(255, 255, 255))
    return out


# ---------------------------------------------------------------------- masks
def _layer_alpha(layer: Any) -> np.ndarray | None:
    """A painted layer (H, W, 4) RGBA array, PIL image or file path -> (H, W) bool of painted pixels."""
    if layer is None:
        return None
    if isinstance(layer, (str, os.PathLike)):
        with Image.open(layer) as im:
            layer = im.convert("RGBA")
    if isinstance(layer, Image.Image):
        layer = np.asarray(layer.convert("RGBA"))
    arr = np.asarray(layer)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return arr[..., 3] > 0
    if arr.ndim == 3:  # no alpha: anything not black was painted
        return arr.any(axis=-1)
    if arr.ndim == 2:
        return arr > 0
    raise GoodDragError(f"mask layer has an unexpected shape {arr.shape}")


def mask_from_layers(layers: Sequence[Any] | None, size: tuple[int, int]) -> np.ndarray | None:
    """Union of the painted strokes of every layer (alpha > 0) as an (H, W) bool mask for an
    image of ``size`` = (W, H); a pixel is in when any part of it was painted. None when
    nothing is painted (then everything may change)."""
    union = None
    for layer in layers or []:
        alpha = _layer_alpha(layer)
        if alpha is None:
            continue
        if union is None:
            union = alpha.copy()
        elif alpha.shape == union.shape:
            union |= alpha
        else:  # layers of another size: bring to the first one's
            union |= np.asarray(Image.fromarray(alpha).resize(union.shape[::-1], Image.NEAREST))
    if union is None or not union.any():
        return None
    W, H = size
    if union.shape != (H, W):
        covered = Image.fromarray(union.astype(np.uint8) * 255).resize((W, H), Image.BOX)
        union = np.asarray(covered) > 0
    return union if union.any() else None


def mask_from_editor(value: dict | None, size: tuple[int, int]) -> np.ndarray | None:
    """Mask from a ``gr.ImageEditor`` value ``{"background", "layers", "composite"}``."""
    if not value:
        return None
    return mask_from_layers(value.get("layers") or [], size)


def mask_layer(mask: np.ndarray | None, scale: int, color=MASK_COLOR) -> np.ndarray | None:
    """A bool mask as an RGBA editor layer at display size (painted where True)."""
    if mask is None:
        return None
    m = np.repeat(np.repeat(np.asarray(mask, dtype=bool), scale, 0), scale, 1)
    rgb = [int(v) for v in color[0].strip("rgb() ").split(",")]
    layer = np.zeros((*m.shape, 4), dtype=np.uint8)
    layer[m] = [*rgb, round(255 * color[1])]
    return layer


# --------------------------------------------------------------------- inputs
def load_upload(path: str | Path, max_bytes: int = int(MAX_UPLOAD_MB * 2**20), max_pixels: int = MAX_PIXELS,
                what: str = "upload") -> Image.Image:
    """Open an uploaded image as RGB after checking its size on disk, its type and its
    pixel count (before decoding); each failure is a one-line GoodDragError."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise GoodDragError(f"{what} {name!r}: no such file")
    nbytes = path.stat().st_size
    if nbytes > max_bytes:
        raise GoodDragError(
            f"{what} {name!r} is {nbytes / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB"
        )
    kinds = ", ".join(IMAGE_FORMATS.values())
    try:
        with Image.open(path) as im:
            fmt = im.format
            w, h = im.size
            if fmt not in IMAGE_FORMATS:
                raise GoodDragError(f"{what} {name!r} is a {fmt} image; use one of {kinds}")
            if w * h > max_pixels:
                raise GoodDragError(
                    f"{what} {name!r} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is {max_pixels / 1e6:.1f}"
                )
            im.seek(0)
            im.load()
            return im.convert("RGB")
    except GoodDragError:
        raise
    except Image.DecompressionBombError:
        raise GoodDragError(f"{what} {name!r} has too many pixels; the limit is {max_pixels / 1e6:.1f} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise GoodDragError(f"{what} {name!r} is not an image this app reads ({kinds})") from None


def check_run(image: Image.Image | None, points, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check what a run needs; returns (handles, targets) or raises a one-line GoodDragError."""
    from .samples import check_points

    if image is None:
        raise GoodDragError("no image: upload one or pick an example first")
    handles, targets = split_points(points)
    handles, targets = check_points(handles, targets, (image.height, image.width))
    if mask is not None and np.shape(mask) != (image.height, image.width):
        raise GoodDragError(
            f"the mask is {np.shape(mask)[1]}x{np.shape(mask)[0]} but the image is {image.width}x{image.height}"
        )
    return handles, targets


def run_problem(image: Image.Image | None, points, mask: np.ndarray | None = None) -> str | None:
    """Why a run cannot start, as a sentence for the page, or None when it can."""
    try:
        check_run(image, points, mask)
    except GoodDragError as err:
        text = str(err)
        return text[0].upper() + text[1:] + "."
    return None


def parse_settings(text: str | dict | None) -> dict[str, Any]:
    """The API's optional settings: a JSON object of DragConfig fields ("" = none)."""
    if isinstance(text, dict):
        return dict(text)
    if text is None or not str(text).strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GoodDragError(f"settings are not valid JSON ({err.msg}); e.g. {{\"lora_steps\": 20}}") from None
    if not isinstance(data, dict):
        raise GoodDragError("settings must be a JSON object of setting names and values, e.g. {\"lora_steps\": 20}")
    return data


def make_config(preset: str, settings: dict[str, Any] | None = None):
    """``get_preset`` with the page's values; None values keep the preset's."""
    from .config import DragConfig, get_preset

    types = {f.name: str(f.type) for f in DragConfig.__dataclass_fields__.values()}
    overrides = {}
    for name, value in (settings or {}).items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        kind = types.get(name, "")
        if kind in ("int", "float"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise GoodDragError(f"setting {name} must be a number, got {value!r}") from None
            if kind == "int":
                if not number.is_integer():
                    raise GoodDragError(f"setting {name} must be a whole number, got {value!r}")
                number = int(number)
            value = number
        overrides[name] = value
    return get_preset(preset, **overrides)


def default_preset(model: str | None) -> str:
    """The shapes preset for the shipped model, GoodDrag otherwise."""
    return "shapes-gooddrag" if (model or "").strip() == SHAPES_MODEL else "gooddrag"


def preset_for_model(model: str | None, current: str | None) -> str:
    """Keep the method, switch between the shapes-* and the Stable Diffusion presets."""
    from .config import PRESETS

    method = PRESETS[current].method if current in PRESETS else "gooddrag"
    return f"shapes-{method}" if (model or "").strip() == SHAPES_MODEL else method


def resolve_model(model: str | None) -> str:
    """The model box's text -> what ``DragPipeline.from_pretrained`` takes."""
    model = (model or "").strip()
    if not model:
        raise GoodDragError(f"no model: choose {SHAPES_MODEL}, a hub id or a local path")
    if model == SHAPES_MODEL:
        from .shapes.bench import shipped_model_dir

        return str(shipped_model_dir())
    return model


def result_name(now: datetime | None = None) -> str:
    """A fresh result folder name: local time and a short random id, e.g. ``20250101-120000-3fa9c1``."""
    return f"{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def zip_folder(folder: Path, dest: Path) -> Path:
    """Every file of ``folder`` into ``dest`` (a zip), under ``<folder name>/``."""
    tmp = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}")
    os.replace(tmp, dest)
    return dest


# ------------------------------------------------------------------- examples
@dataclass
class Example:
    name: str
    image: Image.Image
    mask: np.ndarray | None
    points: list[list[float]]
    prompt: str = ""


def shipped_examples(seeds=EXAMPLE_SEEDS, repo_examples: bool = True) -> list[Example]:
    """Shapes cases (64x64, exact ground truth) and, from a source checkout, ``examples/*``."""
    from .shapes.scenes import make_case

    out = []
    for seed, kind in seeds:
        case = make_case(seed, size=64, kind=kind)
        pts = []
        for h, t in zip(case.handle_points.tolist(), case.target_points.tolist()):
            pts += [h, t]
        out.append(Example(f"shapes {kind} #{seed}", Image.fromarray(case.image), case.mask, pts))
    if repo_examples:
        from .samples import load_sample

        root = Path(__file__).resolve().parents[2] / "examples"
        for folder in sorted(root.glob("*")) if root.is_dir() else []:
            try:
                s = load_sample(folder)
            except GoodDragError:
                continue
            pts = []
            for h, t in zip(s.handle_points.tolist(), s.target_points.tolist()):
                pts += [h, t]
            out.append(Example(folder.name, s.image, s.mask, pts, s.prompt))
    return out


# --------------------------------------------------------------------- engine
@dataclass
class EditOutput:
    result: Any  # DragResult
    folder: Path
    zip_path: Path
    config: Any


@dataclass
class _Loaded:
    pipe: Any
    model: str
    resolved: str
    dtype: str
    vae: str | None


class Engine:
    """Runs edits for the app: loads and caches pipelines by (model, device, dtype, vae),
    runs one edit at a time on its device, writes result folders, and cancels runs."""

    def __init__(self, results_dir: str | Path = DEFAULT_RESULTS_DIR, device: str = "auto", *,
                 lora_cache_dir: str | Path | None = None, max_cached: int = 2):
        self.results_dir = Path(results_dir).resolve()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.lora_cache_dir = lora_cache_dir
        self.max_cached = max(1, max_cached)
        self._pipes: OrderedDict[tuple, _Loaded] = OrderedDict()
        self._load_lock = threading.Lock()
        self.run_lock = threading.Lock()
        """Held for a whole edit: a cancelled run that is still stopping keeps the next one waiting."""
        self._active: dict[str, tuple[threading.Event, threading.Event]] = {}
        self._points: dict[str, list[list[float]]] = {}
        self._points_lock = threading.Lock()
        self.display_dir = Path(tempfile.mkdtemp(prefix="gooddrag-ui-display-"))
        atexit.register(shutil.rmtree, self.display_dir, True)

    # -- pipelines
    def pipeline(self, model: str, dtype: str = "fp32", vae: str | None = None) -> _Loaded:
        """The cached pipeline for (model, device, dtype, vae), loaded on first use.
        Loading errors become one-line GoodDragErrors."""
        from .pipeline import DragPipeline

        resolved = resolve_model(model)
        vae = (vae or "").strip() or None
        key = (resolved, self.device, dtype, vae)
        with self._load_lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            while len(self._pipes) >= self.max_cached:  # make room first: two big models may not fit
                self._pipes.popitem(last=False)
                _free_device_memory()
            try:
                pipe = DragPipeline.from_pretrained(resolved, vae=vae, device=self.device, dtype=dtype)
            except GoodDragError:
                raise
            except Exception as err:  # noqa: BLE001 - any loading failure is shown as one line
                first = (str(err).strip().splitlines() or [""])[0][:300]
                raise GoodDragError(f"cannot load model {model!r}: {type(err).__name__}: {first}") from None
            loaded = _Loaded(pipe, model.strip(), resolved, dtype, vae)
            self._pipes[key] = loaded
            return loaded

    # -- each browser session's points. Kept here, not in a gr.State: a State is sent
    # with the event, so a second click before the first one's answer would start
    # from the stale list and drop a point.
    def points(self, session: str) -> list[list[float]]:
        with self._points_lock:
            return [list(p) for p in self._points.get(session, [])]

    def update_points(self, session: str, change: Callable[[list], list]) -> list[list[float]]:
        """Apply ``change`` (old list -> new list) atomically; returns the new list."""
        with self._points_lock:
            new = [list(p) for p in change(self._points.get(session, []))]
            self._points[session] = new
            return [list(p) for p in new]

    def drop_session(self, session: str) -> None:
        with self._points_lock:
            self._points.pop(session, None)

    # -- cancellation, per browser session
    def start_run(self, session: str) -> tuple[threading.Event, threading.Event]:
        """Register a run of ``session``: (cancel flag its callback checks, set when it has ended)."""
        flags = (threading.Event(), threading.Event())
        self._active[session] = flags
        return flags

    def end_run(self, session: str, flags: tuple[threading.Event, threading.Event]) -> None:
        flags[1].set()
        if self._active.get(session) is flags:
            del self._active[session]

    def cancel(self, session: str, wait: float = 60.0) -> bool | None:
        """Ask the session's run to stop and wait until it has (the LoRA is removed, the
        device free). None: nothing was running; else whether it stopped within ``wait`` s."""
        flags = self._active.get(session)
        if flags is None:
            return None
        flags[0].set()
        return flags[1].wait(wait)

    # -- one edit
    def edit(
        self,
        image: Image.Image,
        points: Sequence[Sequence[float]],
        mask: np.ndarray | None,
        *,
        prompt: str = "",
        preset: str = "shapes-gooddrag",
        settings: dict[str, Any] | None = None,
        model: str = SHAPES_MODEL,
        dtype: str = "fp32",
        vae: str | None = None,
        source: str = "upload",
        callback: Callable | None = None,
        on_status: Callable[[str], None] | None = None,
        on_loaded: Callable[[Any], None] | None = None,
    ) -> EditOutput:
        """Check the inputs, run the drag (LoRA cached or trained by the pipeline), write
        the result folder (the files ``gooddrag edit`` writes, with the trajectory) and its zip."""
        import torch

        from .outputs import run_record, write_result_folder
        from .pipeline import image_sha256

        config = make_config(preset, settings)
        handles, targets = check_run(image, points, mask)
        if on_status and self.run_lock.locked():
            on_status("Waiting for the previous run to stop...")
        with self.run_lock:
            if on_status:
                on_status(f"Loading model {model.strip()}...")
            loaded = self.pipeline(model, dtype, vae)
            pipe = loaded.pipe
            if on_loaded:
                on_loaded(pipe)
            if on_status:
                on_status("Running...")
            t0 = time.perf_counter()
            result = pipe(
                image, handles, targets, mask=mask, prompt=prompt or "", config=config,
                generator=torch.Generator().manual_seed(config.seed), lora_cache_dir=self.lora_cache_dir,
                return_trajectory=True, callback=callback, progress=False,
            )
            seconds = time.perf_counter() - t0
        name = result_name()
        folder = self.results_dir / name
        record = run_record(
            result=result, config=config, seed=config.seed,
            inputs={
                "layout": "ui", "source": source, "prompt": prompt or "",
                "image_sha256": image_sha256(image), "image_size": [image.width, image.height],
                "points": points_to_text(points), "preset": preset,
                "mask_pixels": None if mask is None else int(mask.sum()),
            },
            model={
                "model": loaded.model, "resolved": loaded.resolved,
                "kind": pipe.source.kind if pipe.source else None, "vae": loaded.vae,
                "device": str(pipe.device), "dtype": loaded.dtype,
                "prediction_type": pipe.scheduler.config.prediction_type,
            },
            argv=["gooddrag", "ui"],
        )
        write_result_folder(folder, input_image=image, result=result, mask=mask, run_record=record, overwrite=False)
        zip_path = zip_folder(folder, self.results_dir / f"{name}.zip")
        logger.info("edit %s done in %.1f s", name, seconds)
        return EditOutput(result, folder, zip_path, config)

    def served_copy(self, path: Path, name: str | None = None) -> str:
        """A link (or copy) of a result file in the app's temporary folder, which gradio may
        hand to the browser wherever the results folder is; the results folder itself is
        never served."""
        dest = self.display_dir / (name or path.name)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
        return str(dest)

    def display_gif(self, folder: Path, scale: int) -> str | None:
        """The trajectory GIF enlarged for the page (the result folder keeps the original)."""
        gif = folder / "trajectory.gif"
        if not gif.is_file():
            return None
        if scale == 1:
            return self.served_copy(gif, f"{folder.name}-trajectory.gif")
        import imageio.v3 as iio

        frames = iio.imread(gif, index=None)
        big = [np.repeat(np.repeat(np.asarray(f)[..., :3], scale, 0), scale, 1) for f in frames]
        out = self.display_dir / f"{folder.name}-trajectory.gif"
        iio.imwrite(out, big, extension=".gif", duration=400, loop=0)
        return str(out)


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


PHASE_TEXT = {
    "lora": "Training the LoRA on the image",
    "inversion": "DDIM inversion",
    "drag": "Dragging (tracking rounds)",
    "denoise": "Denoising",
}


def _settings_spec():
    """(name, type, help, is_main) for each setting the page shows, in ``gooddrag edit``'s order."""
    from .cli import METHOD_SETTINGS

    spec = [(name, typ, text, name in MAIN_SETTINGS) for _, name, typ, text in METHOD_SETTINGS]
    spec.append(("seed", int, "seed of the LoRA's noise and timesteps", False))
    main = sorted((s for s in spec if s[3]), key=lambda s: MAIN_SETTINGS.index(s[0]))
    return main + [s for s in spec if not s[3]]


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio as gr

    return gr


def _message(err: BaseException) -> str:
    if isinstance(err, GoodDragError):
        return str(err)
    if type(err).__name__ == "OutOfMemoryError":
        return "out of GPU memory; try dtype fp16, a smaller resolution or LoRA batch size 1"
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


# ------------------------------------------------------------------------ app
def build_app(
    default_model: str = SHAPES_MODEL,
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    device: str = "auto",
    *,
    lora_cache_dir: str | Path | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
    examples: Sequence[Example] | None = None,
    setting_defaults: dict[str, Any] | None = None,
):
    """The Gradio app (a ``gr.Blocks``, queued: one run at a time on ``device``).

    default_model: ``"shapes-64"`` (shipped, offline), a hub id or a local path;
    results_dir: where result folders and zips go (names are generated);
    examples: the gallery (default :func:`shipped_examples`); setting_defaults:
    values shown in the settings boxes instead of the preset's (for demos and tests).
    The engine is ``app.gooddrag_engine``.
    """
    gr = _gradio()
    from .config import PRESETS
    from .loading import DEFAULT_MODEL

    engine = Engine(results_dir, device, lora_cache_dir=lora_cache_dir)
    max_bytes = int(max_upload_mb * 2**20)
    examples = list(shipped_examples() if examples is None else examples)
    spec = _settings_spec()
    fixed = dict(setting_defaults or {})
    start_preset = default_preset(default_model)
    concurrency = dict(concurrency_limit=1, concurrency_id=f"gooddrag-run-{device}")
    light = dict(concurrency_limit=None, show_progress="hidden")

    def preset_value(preset: str, name: str):
        return fixed.get(name, getattr(PRESETS[preset], name))

    # ---------------------------------------------------------- handlers
    def new_input(session: str, image: Image.Image, mask: np.ndarray | None, points, note: str):
        """Outputs for a new input image: state, editor, points view and texts."""
        s = display_scale(image.width, image.height)
        points = engine.update_points(session, lambda _: points)
        layer = mask_layer(mask, s)
        editor = {"background": to_display(image, s), "layers": [layer] if layer is not None else [],
                  "composite": None}
        return (image, editor, draw_overlay(image, points, s, mask), describe_points(points),
                f"{note} ({image.width}x{image.height} px).", describe_mask(mask))

    def on_upload(path, request: gr.Request = None):
        if path is None:
            return (gr.skip(),) * 6
        try:
            image = load_upload(path, max_bytes=max_bytes, max_pixels=max_pixels)
        except GoodDragError as err:
            gr.Warning(str(err))
            return (*(gr.skip(),) * 4, f"**Upload refused:** {err}", gr.skip())
        return new_input(_session(request), image, None, [], f"Loaded {Path(path).name}")

    def on_example(evt: gr.SelectData, request: gr.Request = None):
        ex = examples[evt.index]
        return new_input(_session(request), ex.image, ex.mask, ex.points, f"Example {ex.name}") + (ex.prompt,)

    def on_click(image, editor, evt: gr.SelectData, request: gr.Request = None):
        if image is None:
            return gr.skip(), "Upload an image or pick an example first."
        s = display_scale(image.width, image.height)
        xy = click_to_image(evt.index, s, image.size)
        points = engine.update_points(_session(request), lambda old: add_point(old, xy))
        return _points_view(image, points, editor), describe_points(points)

    def _points_view(image, points, editor):
        s = display_scale(image.width, image.height)
        try:
            mask = mask_from_editor(editor, image.size)
        except Exception:  # noqa: BLE001 - a preview only
            mask = None
        return draw_overlay(image, points, s, mask)

    def on_undo(image, editor, request: gr.Request = None):
        points = engine.update_points(_session(request), undo_point)
        if image is None:
            return gr.skip(), describe_points(points)
        return _points_view(image, points, editor), describe_points(points)

    def on_clear(image, editor, request: gr.Request = None):
        engine.update_points(_session(request), lambda _: clear_points())
        if image is None:
            return gr.skip(), describe_points([])
        return _points_view(image, [], editor), describe_points([])

    def on_mask_change(image, editor, request: gr.Request = None):
        points = engine.points(_session(request))
        if image is None or not editor:
            return gr.skip(), gr.skip()
        s = display_scale(image.width, image.height)
        bg = editor.get("background")
        if bg is not None and np.shape(bg)[:2] != (image.height * s, image.width * s):
            return gr.skip(), gr.skip()  # a change from before the new input arrived
        mask = mask_from_editor(editor, image.size)
        return draw_overlay(image, points, s, mask), describe_mask(mask)

    def on_model_change(model, preset):
        new = preset_for_model(model, preset)
        return gr.update(value=new)

    def on_preset_change(preset):
        return [gr.update(value=preset_value(preset, name)) for name, *_ in spec]

    def on_show_points(show, result):
        if not result:
            return gr.skip()
        return result["with_points"] if show else result["plain"]

    def on_use_result(result, editor, request: gr.Request = None):
        if not result:
            gr.Warning("No result yet: run an edit first.")
            return (gr.skip(),) * 6
        image = result["image"]
        s = display_scale(image.width, image.height)
        engine.update_points(_session(request), lambda _: clear_points())
        layers = list((editor or {}).get("layers") or [])
        ed = {"background": to_display(image, s), "layers": layers, "composite": None}
        mask = mask_from_layers(layers, image.size)
        return (image, ed, draw_overlay(image, [], s, mask), describe_points([]),
                "The result is the new input; click new points.", describe_mask(mask))

    def ui_run(image, editor, model, preset, prompt, vae, dtype, show_final_points,
               request: gr.Request = None, progress=gr.Progress(), **settings):
        """Run from the page: yields (status, live result, before/after, GIF, zip, result state)."""
        skip = gr.skip()
        points = engine.points(_session(request))
        mask = mask_from_editor(editor, image.size) if image is not None else None
        problem = run_problem(image, points, mask)
        if problem:
            gr.Warning(problem)
            yield f"**Cannot run:** {problem}", skip, skip, skip, skip, skip
            return
        try:
            drag_end = make_config(preset, settings).drag_end_step
        except GoodDragError as err:
            gr.Warning(str(err))
            yield f"**Cannot run:** {err}", skip, skip, skip, skip, skip
            return
        session = _session(request)
        flags = engine.start_run(session)
        cancel = flags[0]
        s = display_scale(image.width, image.height)
        events: queue.Queue = queue.Queue()
        state: dict[str, Any] = {"handles": None, "drag_end": drag_end}

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

        def worker():
            try:
                out = engine.edit(
                    image, points, mask, prompt=prompt, preset=preset, settings=settings, model=model,
                    dtype=dtype, vae=vae, source="ui", callback=callback,
                    on_status=lambda text: events.put(("status", text)),
                    on_loaded=lambda pipe: state.__setitem__("pipe", pipe),
                )
                events.put(("done", out))
            except BaseException as err:  # noqa: BLE001 - reported on the page
                if not isinstance(err, (GoodDragError, RunCancelled)):
                    logger.exception("edit failed")
                events.put(("error", err))
            finally:
                engine.end_run(session, flags)

        thread = threading.Thread(target=worker, name="gooddrag-ui-run", daemon=True)
        thread.start()
        before = to_display(image, s)
        progress(0, desc="Starting")
        try:
            while True:
                try:
                    item = events.get(timeout=0.2)
                except queue.Empty:
                    if not thread.is_alive() and events.empty():
                        yield "**Error:** the run stopped unexpectedly.", skip, skip, skip, skip, skip
                        return
                    continue
                kind = item[0]
                if kind == "status":
                    progress(0, desc=item[1])
                    yield item[1], skip, skip, skip, skip, skip
                elif kind == "progress":
                    _, phase, step, total = item
                    progress((step, total), desc=PHASE_TEXT.get(phase, phase), unit="steps")
                elif kind == "preview":
                    _, frame, step, total = item
                    final = state["handles"]
                    view = draw_overlay(frame, [], s, final_points=final) if final is not None else to_display(frame, s)
                    yield f"Denoising: step {step}/{total} (live preview).", view, skip, skip, skip, skip
                elif kind == "error":
                    err = item[1]
                    if isinstance(err, RunCancelled):
                        yield "Run cancelled.", skip, skip, skip, skip, skip
                    else:
                        gr.Warning(_message(err))
                        yield f"**Error:** {_message(err)}", skip, skip, skip, skip, skip
                    return
                elif kind == "done":
                    out: EditOutput = item[1]
                    r = out.result
                    plain = to_display(r.image, s)
                    with_points = draw_overlay(
                        r.image, _interleave(r.initial_handle_points, r.target_points), s,
                        final_points=r.handle_points,
                    )
                    result = {"image": r.image, "plain": plain, "with_points": with_points,
                              "folder": str(out.folder)}
                    dist = ", ".join(f"{d:.1f}" for d in np.linalg.norm(r.handle_points - r.target_points, axis=1))
                    text = (f"Done in {r.timings['total']:.1f} s: result `{out.folder.name}` "
                            f"(handle-to-target distance after the drag: {dist} px; stop: {r.stats.stop_reason}; "
                            f"LoRA: {r.lora.get('source')}).")
                    yield (text, with_points if show_final_points else plain, (before, plain),
                           engine.display_gif(out.folder, s),
                           gr.update(value=engine.served_copy(out.zip_path), interactive=True), result)
                    return
        finally:
            if thread.is_alive():  # closed early (page closed, cancelled): stop the worker
                cancel.set()

    def ui_cancel(request: gr.Request = None):
        stopped = engine.cancel(_session(request))
        if stopped is None:
            return "Cancelled."  # a queued run is dropped by gradio
        return "Run cancelled." if stopped else "Cancelling: the run stops at its next step..."

    def api_drag(image, mask, points, prompt="", preset=None, settings="", model=None,
                 progress=gr.Progress()):
        """Drag edit. image: image file; mask: image file, white = may change (optional);
        points: "x,y>x,y; ..." handle>target pairs in image pixels; prompt: text; preset:
        gooddrag, dragdiffusion, shapes-gooddrag or shapes-dragdiffusion (default: the
        model's); settings: JSON object of setting overrides, e.g. {"lora_steps": 20};
        model: shapes-64, a hub id or a local path (default: the server's).
        Returns the edited image (input size) and the result folder as a zip."""
        from .samples import load_mask

        try:
            if not image:
                raise GoodDragError("no image given")
            img = load_upload(_file_path(image), max_bytes=max_bytes, max_pixels=max_pixels, what="image")
            m = None
            if mask:
                mask_path = _file_path(mask)
                load_upload(mask_path, max_bytes=max_bytes, max_pixels=max_pixels, what="mask")
                m = load_mask(mask_path)
                if m.shape != (img.height, img.width):
                    from .samples import fit_mask

                    m = fit_mask(m, (img.height, img.width))
                if not m.any():
                    m = None
            pts = points_from_text(points)
            model = (model or "").strip() or default_model
            preset = (preset or "").strip() or default_preset(model)
            if preset not in PRESETS:
                raise GoodDragError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")

            def callback(ev):
                progress((ev.step, ev.total), desc=PHASE_TEXT.get(ev.phase, ev.phase), unit="steps")

            out = engine.edit(img, pts, m, prompt=prompt or "", preset=preset, settings=parse_settings(settings),
                              model=model, source="api", callback=callback)
        except GoodDragError as err:
            raise gr.Error(str(err)) from None
        except Exception as err:  # noqa: BLE001
            logger.exception("API edit failed")
            raise gr.Error(_message(err)) from None
        return out.result.image, engine.served_copy(out.zip_path)

    # ------------------------------------------------------------- layout
    # delete_cache: gradio's copies of served files older than a day go, checked hourly
    with gr.Blocks(title="gooddrag", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            "## gooddrag: drag editing with diffusion models\n"
            "1. Upload an image or pick an example. 2. Paint the region that may change (optional: "
            "no mask = everything may change). 3. Click a **handle** point, then its **target**; repeat "
            "for more pairs. 4. Run. Runs queue: one at a time."
        )
        input_state = gr.State(None)
        result_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    upload = gr.UploadButton("Upload image", file_types=["image"], type="filepath",
                                             elem_id="upload", size="md")
                gallery = gr.Gallery(
                    value=[(draw_overlay(ex.image, ex.points, max(1, 128 // max(ex.image.size)), ex.mask), ex.name)
                           for ex in examples],
                    label="Examples (click one)", columns=max(1, len(examples)), rows=1, height=150,
                    allow_preview=False, interactive=False, elem_id="examples", buttons=[], format="png",
                ) if examples else None
                editor = gr.ImageEditor(
                    label="Mask: paint the region that may change (brush; eraser to remove)",
                    sources=(), transforms=(), layers=False, type="numpy", image_mode="RGBA",
                    brush=gr.Brush(colors=[MASK_COLOR], color_mode="fixed", default_size=BRUSH_SIZE),
                    eraser=gr.Eraser(), height=620, elem_id="mask-editor", format="png",
                    # The editor may place a given layer (an example's mask) before its background
                    # has loaded, centred in a canvas of this size: make it the examples' display size.
                    canvas_size=(DISPLAY_SIDE, DISPLAY_SIDE),
                )
                mask_md = gr.Markdown(describe_mask(None), elem_id="mask-info")
            with gr.Column(scale=1):
                points_img = gr.Image(
                    label="Points: click a handle (red), then its target (blue)", interactive=False,
                    type="pil", format="png", elem_id="points-image", height=620,
                    buttons=["fullscreen"],
                )
                points_md = gr.Markdown(describe_points([]), elem_id="points-info")
                with gr.Row():
                    undo_btn = gr.Button("Undo last point", size="md", elem_id="undo")
                    clear_btn = gr.Button("Clear points", size="md", elem_id="clear")
        with gr.Row():
            with gr.Column(scale=1):
                model_box = gr.Dropdown(
                    choices=[SHAPES_MODEL, DEFAULT_MODEL], value=default_model, allow_custom_value=True,
                    label="Model",
                    info=f"{SHAPES_MODEL}: the small offline demo model (64x64 images); or a Stable Diffusion "
                         "1.x/2.x hub id or local folder/file",
                    elem_id="model",
                )
                preset_box = gr.Dropdown(
                    choices=[(PRESET_LABELS.get(p, p), p) for p in PRESETS], value=start_preset,
                    label="Method / preset", info="GoodDrag (AIDD) or the DragDiffusion baseline; shapes-* "
                    "settings fit the 64x64 model", elem_id="preset",
                )
                prompt_box = gr.Textbox(label="Prompt", info="text for the model (empty by default)",
                                        elem_id="prompt")
            with gr.Column(scale=2):
                boxes = {}
                with gr.Row():
                    for name, typ, text, is_main in spec:
                        if is_main:
                            boxes[name] = _number(gr, name, typ, preset_value(start_preset, name),
                                                  text)
                gr.Markdown("Each box starts at the selected preset's default; choosing a preset resets them.",
                            elem_id="settings-note")
                with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                    with gr.Row():
                        for name, typ, text, is_main in spec:
                            if not is_main:
                                boxes[name] = _number(gr, name, typ, preset_value(start_preset, name),
                                                      text)
                    with gr.Row():
                        vae_box = gr.Textbox(label="VAE", info="separate VAE: hub id or path, e.g. "
                                             "stabilityai/sd-vae-ft-mse (default: the model's)")
                        dtype_box = gr.Dropdown(["fp32", "fp16", "bf16"], value="fp32", label="dtype",
                                                info="weights; fp16 needs a GPU")
        with gr.Row():
            run_btn = gr.Button("Run", variant="primary", elem_id="run")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
        status = gr.Markdown("Ready.", elem_id="status")
        with gr.Row():
            with gr.Column():
                result_img = gr.Image(label="Result (live preview while running)", interactive=False, type="pil",
                                      format="png", elem_id="result", height=520)
                show_final = gr.Checkbox(label="Show handles, targets and final handle positions (yellow)",
                                         value=False, elem_id="show-final")
            with gr.Column():
                slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="before-after",
                                        max_height=520)
            with gr.Column():
                gif = gr.Image(label="Trajectory (input, one frame per drag timestep, result)", type="filepath",
                               interactive=False, elem_id="trajectory", height=520)
        with gr.Row():
            download = gr.DownloadButton("Download result folder (.zip)", interactive=False, elem_id="download")
            use_result = gr.Button("Use result as new input", elem_id="use-result")

        # Hidden components of the API endpoint /drag (gradio_client)
        with gr.Group(visible=False):
            api_image = gr.File(label="image", type="filepath")
            api_mask = gr.File(label="mask", type="filepath")
            api_points = gr.Textbox(label="points")
            api_prompt = gr.Textbox(label="prompt", value="")
            api_preset = gr.Textbox(label="preset", value="")
            api_settings = gr.Textbox(label="settings", value="")
            api_model = gr.Textbox(label="model", value="")
            api_out_image = gr.Image(label="edited", type="pil", format="png")
            api_out_zip = gr.File(label="result zip")
            api_btn = gr.Button("drag")

        # ------------------------------------------------------------- events
        # Events that change the points run one at a time in click order, every click counted.
        ordered = dict(concurrency_limit=1, concurrency_id="gooddrag-points", show_progress="hidden",
                       trigger_mode="multiple", api_visibility="private")
        input_outputs = [input_state, editor, points_img, points_md, status, mask_md]
        upload.upload(on_upload, upload, input_outputs, **ordered)
        if gallery is not None:
            gallery.select(on_example, None, [*input_outputs, prompt_box], **ordered)
        points_img.select(on_click, [input_state, editor], [points_img, points_md], **ordered)
        undo_btn.click(on_undo, [input_state, editor], [points_img, points_md], **ordered)
        clear_btn.click(on_clear, [input_state, editor], [points_img, points_md], **ordered)
        editor.change(on_mask_change, [input_state, editor], [points_img, mask_md],
                      api_visibility="private", trigger_mode="always_last", **light)
        model_box.change(on_model_change, [model_box, preset_box], preset_box, api_visibility="private", **light)
        preset_box.change(on_preset_change, preset_box, list(boxes.values()), api_visibility="private", **light)
        show_final.change(on_show_points, [show_final, result_state], result_img, api_visibility="private",
                          **light)
        use_result.click(on_use_result, [result_state, editor], input_outputs, **ordered)
        run_event = run_btn.click(
            ui_run, [input_state, editor, model_box, preset_box, prompt_box, vae_box, dtype_box, show_final],
            [status, result_img, slider, gif, download, result_state], inputs_kwargs=boxes,
            api_visibility="private", show_progress="full", show_progress_on=[status], **concurrency,
        )
        cancel_btn.click(ui_cancel, None, status, cancels=[run_event], api_visibility="private",
                         concurrency_limit=None)
        api_btn.click(
            api_drag, [api_image, api_mask, api_points, api_prompt, api_preset, api_settings, api_model],
            [api_out_image, api_out_zip], api_name="drag", **concurrency,
        )

        def on_unload(request: gr.Request = None):
            engine.drop_session(_session(request))

        demo.unload(on_unload)

    demo.queue(default_concurrency_limit=1)
    demo.gooddrag_engine = engine
    demo.gooddrag_max_bytes = max_bytes
    return demo


def _session(request) -> str:
    """The browser session's id (``gr.Request.session_hash``); "local" outside a request."""
    return getattr(request, "session_hash", None) or "local"


def _interleave(handles: np.ndarray, targets: np.ndarray) -> list[list[float]]:
    out: list[list[float]] = []
    for h, t in zip(np.asarray(handles).tolist(), np.asarray(targets).tolist()):
        out += [h, t]
    return out


def _file_path(value) -> str:
    """A gr.File value (a path, or a dict with one) -> the path."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return str(value)


def _number(gr, name: str, typ, value, info: str):
    label = {"lam": "lambda"}.get(name, name).replace("_", " ")
    return gr.Number(value=value, label=label, info=info, precision=0 if typ is int else None,
                     elem_id=f"setting-{name}", min_width=150)


def launch_app(demo, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, share: bool = False,
               prevent_thread_lock: bool = False, quiet: bool = False):
    """Launch a :func:`build_app` app (uploads capped at its size limit, no analytics,
    nothing served from disk but what the app returns). Returns gradio's
    ``(app, local_url, share_url)``."""
    _gradio()
    return demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
        quiet=quiet, max_file_size=demo.gooddrag_max_bytes, show_error=True,
    )


# ----------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``gooddrag ui`` options (imports nothing heavy)."""
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on; 0.0.0.0 serves the local network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs internet; anyone with the link can "
                             "use the app) (default: off)")
    parser.add_argument("--model", default=SHAPES_MODEL,
                        help=f"model selected at start: {SHAPES_MODEL} (shipped, offline), a hub id or a local "
                             "path (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR,
                        help="server folder for result folders and zips (default: ./%(default)s)")
    parser.add_argument("--lora-cache-dir", default=None,
                        help="where trained LoRAs are cached (default: $GOODDRAG_CACHE/lora or ~/.cache/gooddrag/lora)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="largest accepted image in pixels, width x height (default: %(default)s)")
    return parser


def run(args: argparse.Namespace, say=logger.warning) -> int:
    """Build and launch the app; blocks until interrupted. Returns the exit code."""
    from .loading import resolve_device

    resolve_device(args.device)  # a bad device fails now, with the usual one-line error
    if args.port < 0 or args.port > 65535:
        raise GoodDragError(f"--port must be 0..65535, got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise GoodDragError("the web UI needs gradio: pip install 'gooddrag[ui]'") from None
    if args.share:
        say("warning: --share makes the app reachable by anyone with the link")
    demo = build_app(
        default_model=args.model, results_dir=args.results_dir, device=args.device,
        lora_cache_dir=args.lora_cache_dir, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
    )
    say(f"results go to {demo.gooddrag_engine.results_dir}")
    try:
        launch_app(demo, args.host, args.port, share=args.share)
    except OSError as err:
        raise GoodDragError(f"cannot serve on {args.host}:{args.port}: {err}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gooddrag.ui``: the same as ``gooddrag ui``."""
    import sys

    from .cli import main as cli_main

    return cli_main(["ui", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
