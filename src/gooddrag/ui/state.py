"""Pure state helpers of the web UI: points, masks, uploads, display scaling, settings.

Nothing here imports gradio or torch; each function takes and returns plain values
(lists of points, numpy masks, PIL images) and is tested on its own
(tests/test_ui_state.py). The input checks (:mod:`gooddrag.io.samples`) and the presets
(:mod:`gooddrag.methods`) import torch, so they are imported inside the functions that use
them (marked ``# heavy``): :mod:`.server` imports this module for ``gooddrag ui --help``.

Frames: points are (x, y) pixels of the *input* image; how pictures are shown and
clicks mapped back is :mod:`gooddrag.ui.views`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import NO_MASK_WARNING, GoodDragError
from ..models.names import SHAPES_MODEL  # noqa: F401 - re-exported: gooddrag.ui.SHAPES_MODEL

MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 4096 * 4096
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF"}
"""PIL format name -> how messages name it: the uploads accepted."""
DISPLAY_SIDE = 512
"""Images with a shorter long side are shown enlarged by an integer factor up to this."""
PAGE_METHODS = ("gooddrag", "gooddrag-plus", "dragdiffusion", "freedrag", "dragnoise", "fastdrag")
"""The methods the page offers, in this order (each runs the preset that fits the model)."""
MAIN_SETTINGS = ("lora_steps", "drag_end_step", "track_per_step", "max_drag_per_track", "lr", "lam")
"""Settings shown up front; the others of ``gooddrag edit`` are in the Advanced accordion."""
MASK_COLOR = ("rgb(128, 128, 128)", 0.35)
"""Brush of the mask editor: a neutral grey (it darkens or lightens, never changes a hue)."""
MASK_OUTLINE = (255, 215, 0)
"""Outline and hatching of the mask on the points view, whose other pixels keep their colours."""
HATCH_EVERY = 8
"""Display pixels between two hatching lines."""
SHORTFALL_COLOR = (255, 140, 0)
"""The line from a final handle that stopped short to its target."""
BRUSH_SIZE = 20
"""Brush radius in display pixels (the editor's size menu changes it): 2.5 pixels of a 64x64 image."""

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
    from ..io.samples import parse_points  # heavy: torch

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
        return f"Mask: none painted. {NO_MASK_WARNING[0].upper()}{NO_MASK_WARNING[1:]}."
    n = int(np.sum(mask))
    return f"Mask: {n} px ({n / np.size(mask):.0%} of the image) may change."


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


# --------------------------------------------------------------------- inputs
def _pixels(n: int) -> str:
    """A pixel count with its unit: megapixels from 0.1 up, else pixels."""
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def load_upload(path: str | Path, max_bytes: int = int(MAX_UPLOAD_MB * 2**20), max_pixels: int = MAX_PIXELS,
                what: str = "upload") -> Image.Image:
    """Open an uploaded image as RGB after checking its size on disk, its type and its
    pixel count (before decoding); each failure is a one-line GoodDragError."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise GoodDragError(f"{what} {name!r}: no such file")
    nbytes = path.stat().st_size
    if nbytes == 0:
        raise GoodDragError(f"{what} {name!r} is empty (0 bytes)")
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
                    f"{what} {name!r} is {w}x{h} = {_pixels(w * h)}; the limit is {_pixels(max_pixels)}"
                )
            im.seek(0)
            im.load()
            return im.convert("RGB")
    except GoodDragError:
        raise
    except Image.DecompressionBombError:
        raise GoodDragError(f"{what} {name!r} has too many pixels; the limit is {_pixels(max_pixels)}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise GoodDragError(f"{what} {name!r} is not an image this app reads ({kinds})") from None


def check_run(image: Image.Image | None, points, mask: np.ndarray | None = None,
              config=None) -> tuple[np.ndarray, np.ndarray]:
    """Check what a run of ``config`` (a DragConfig; None: any method's) needs; returns (handles,
    targets) or raises a one-line GoodDragError."""
    from ..io.samples import check_mask_covers_points, check_points  # heavy: torch
    from ..methods.registry import check_mask_given

    if image is None:
        raise GoodDragError("no image: upload one or pick an example first")
    handles, targets = split_points(points)
    handles, targets = check_points(handles, targets, (image.height, image.width))
    if mask is not None and np.shape(mask) != (image.height, image.width):
        raise GoodDragError(
            f"the mask is {np.shape(mask)[1]}x{np.shape(mask)[0]} but the image is {image.width}x{image.height}"
        )
    if mask is not None:  # a painted mask that misses a handle or target cannot work
        check_mask_covers_points(np.asarray(mask, dtype=bool), handles, targets)
    if config is not None:
        check_mask_given(config.method, mask)  # FastDrag's
    return handles, targets


def run_problem(image: Image.Image | None, points, mask: np.ndarray | None = None, config=None) -> str | None:
    """Why a run of ``config`` cannot start, as a sentence for the page, or None when it can."""
    try:
        check_run(image, points, mask, config)
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
    from ..methods.config import DragConfig, get_preset  # heavy: torch

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
        elif kind == "bool" and not isinstance(value, bool):
            # a true/false setting shown in a number box comes back as 1 or 0 (run.json must say true/false)
            if value not in (0, 1, "0", "1", 0.0, 1.0):
                raise GoodDragError(f"setting {name} must be 1 (on) or 0 (off), got {value!r}")
            value = bool(int(float(value)))
        overrides[name] = value
    return get_preset(preset, **overrides)


def default_preset(model: str | None) -> str:
    """GoodDrag's preset that fits ``model`` (the one resolver, :func:`gooddrag.methods.presets.for_model`)."""
    from ..methods import presets  # heavy: torch

    return presets.for_model("gooddrag", (model or "").strip() or None)


def preset_for_model(model: str | None, current: str | None) -> str:
    """Keep the method of ``current``, take its preset that fits ``model``."""
    from ..methods import presets  # heavy: torch
    from ..methods.config import PRESETS  # heavy: torch

    method = PRESETS[current].method if current in PRESETS else "gooddrag"
    family = presets.family_for((model or "").strip() or None)
    return presets.preset_name(method if (method, family) in presets.PRESET_NAMES else "gooddrag", family)


def method_choices(model: str | None) -> list[tuple[str, str]]:
    """The page's method list for ``model``: (label, preset) of each of PAGE_METHODS that has a preset
    for the model (shapes-dit-64 has GoodDrag's three only), the preset the one that fits the model;
    labels name the method, never a preset."""
    from ..methods import presets  # heavy: torch

    family = presets.family_for((model or "").strip() or None)
    return [(presets.METHOD_LABELS[m], presets.PRESET_NAMES[m, family]) for m in PAGE_METHODS
            if (m, family) in presets.PRESET_NAMES]


def preset_words(preset: str) -> str:
    """``"GoodDrag+ (ours: ...) with the shapes-64 settings (64 px)"`` for the status."""
    from ..methods import presets  # heavy: torch
    from ..methods.config import PRESETS  # heavy: torch

    return (f"{presets.METHOD_LABELS[PRESETS[preset].method]} with the "
            f"{presets.FAMILY_LABELS[presets.family_of_preset(preset)]}")


def interleave_points(handles: np.ndarray, targets: np.ndarray) -> list[list[float]]:
    """(N, 2) handles and targets -> the alternating [handle, target, ...] list."""
    out: list[list[float]] = []
    for h, t in zip(np.asarray(handles).tolist(), np.asarray(targets).tolist()):
        out += [h, t]
    return out


