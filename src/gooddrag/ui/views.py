"""Display frames: how a picture is shown on the page, and clicks and painted masks mapped back.

Points are (x, y) pixels of the *input* image everywhere else. Small pictures are
shown enlarged by an integer factor (:func:`display_scale`), each pixel a block,
so the mask can be painted and points clicked precisely; pictures larger than
VIEW_MAX_SIDE are shown scaled down to fit it (the mask editor, the points view
and the result panes; the result folder and downloads stay full size). Nothing
here imports gradio or torch (tests/test_ui_state.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..io.outputs import HANDLE_COLOR, draw_points
from .state import DISPLAY_SIDE, HATCH_EVERY, MASK_COLOR, MASK_OUTLINE, SHORTFALL_COLOR

VIEW_MAX_SIDE = 1024
"""Pictures larger than this are shown scaled down to fit it (editor, points view, results): at
12 megapixels every event carried and every view re-sent the whole picture, seconds each."""


def display_scale(width: int, height: int, side: int = DISPLAY_SIDE,
                  max_side: int = VIEW_MAX_SIDE) -> int | float:
    """How a ``width`` x ``height`` picture is shown: an integer enlargement (>= 1) up to
    ``side``, or for a picture larger than ``max_side`` a reduction factor < 1 that fits it."""
    if max(width, height) > max_side:
        return max_side / max(width, height)
    return max(1, side // max(1, width, height))


def display_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The shown size of a ``size`` = (W, H) picture at ``scale``."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_display(image: Image.Image, scale: float) -> Image.Image:
    """The picture as shown: each input pixel a ``scale`` x ``scale`` block (nearest neighbour)
    for an integer scale, or scaled down (bilinear) for a scale < 1."""
    image = image.convert("RGB")
    if scale == 1:
        return image
    if scale < 1:
        return image.resize(display_size(image.size, scale), Image.BILINEAR, reducing_gap=2.0)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def mask_to_display(mask: np.ndarray, scale: float) -> np.ndarray:
    """A (H, W) bool mask at the display size (blocks when enlarged, nearest when reduced)."""
    m = np.asarray(mask, dtype=bool)
    if scale < 1:
        return np.asarray(Image.fromarray(m).resize(display_size(m.shape[::-1], scale), Image.NEAREST))
    return np.repeat(np.repeat(m, scale, 0), scale, 1) if scale > 1 else m


def click_to_image(xy: Sequence[float], scale: float, size: tuple[int, int]) -> list[int]:
    """A click on display pixel (x, y) -> the input pixel (x, y) under that pixel's centre; ``size`` = (W, H)."""
    W, H = size
    x = min(W - 1, max(0, math.floor((int(xy[0]) + 0.5) / scale)))
    y = min(H - 1, max(0, math.floor((int(xy[1]) + 0.5) / scale)))
    return [x, y]


def image_to_display(points: np.ndarray, scale: float) -> np.ndarray:
    """(N, 2) input (x, y) pixels -> display pixels (the centre of each pixel's block when enlarged)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5


def draw_overlay(
    image: Image.Image,
    points: Sequence[Sequence[float]] | None,
    scale: float,
    mask: np.ndarray | None = None,
    final_points: np.ndarray | None = None,
    shortfall_px: float | None = None,
) -> Image.Image:
    """The display image with the mask outlined and hatched (:func:`mark_mask`: the
    colours under it are kept), each pair as handle (red) -> target (blue) with an
    arrow (:func:`gooddrag.io.outputs.draw_points`), a pending handle, and optionally
    final handle positions (yellow squares); a final handle farther than ``shortfall_px``
    (image px) from its target gets an orange line to it (:func:`shortfall_limit_px`)."""
    disp = to_display(image, scale)
    pts = [list(p) for p in (points or [])]
    n = len(pts) // 2 * 2
    arr = np.asarray(pts[:n], dtype=np.float64).reshape(-1, 2)
    if mask is not None:
        disp = mark_mask(disp, mask_to_display(mask, scale))
    out = draw_points(
        disp, image_to_display(arr[0::2], scale), image_to_display(arr[1::2], scale), None,
        final_points=None if final_points is None else image_to_display(final_points, scale),
    )
    if final_points is not None and shortfall_px is not None:
        draw = ImageDraw.Draw(out)
        for final, target in zip(np.asarray(final_points, dtype=np.float64), arr[1::2]):
            if np.linalg.norm(final - target) > shortfall_px:
                (fx, fy), (tx, ty) = image_to_display(np.stack([final, target]), scale)
                draw.line([fx, fy, tx, ty], fill=SHORTFALL_COLOR, width=max(2, round(scale)))
    if len(pts) % 2:
        (x, y), = image_to_display(np.asarray([pts[-1]]), scale)
        r = max(3, round(min(out.size) / 100))
        ImageDraw.Draw(out).ellipse([x - r, y - r, x + r, y + r], fill=HANDLE_COLOR, outline=(255, 255, 255))
    return out


def mask_marks(mask: np.ndarray, width: int = 2, every: int = HATCH_EVERY) -> np.ndarray:
    """Where the mask is drawn: its inner outline (``width`` pixels) and diagonal hatching
    lines ``every`` pixels apart, (H, W) bool; every other pixel is left alone."""
    m = np.asarray(mask, dtype=bool)
    inner = np.pad(m, width, constant_values=False)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            inner[width:-width, width:-width] &= np.roll(np.roll(np.pad(m, width), dy, 0), dx, 1)[width:-width,
                                                                                               width:-width]
    interior = inner[width:-width, width:-width]
    yy, xx = np.indices(m.shape)
    return (m & ~interior) | (m & ((xx + yy) % every == 0))


def mark_mask(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """``image`` with the mask's outline and hatching (:func:`mask_marks`) in MASK_OUTLINE."""
    arr = np.asarray(image.convert("RGB")).copy()
    if mask.shape != arr.shape[:2] or not mask.any():
        return Image.fromarray(arr)
    arr[mask_marks(mask)] = MASK_OUTLINE
    return Image.fromarray(arr)


def mask_layer(mask: np.ndarray | None, scale: float, color=MASK_COLOR) -> np.ndarray | None:
    """A bool mask as an RGBA editor layer at display size (painted where True)."""
    if mask is None:
        return None
    m = mask_to_display(mask, scale)
    rgb = [int(v) for v in color[0].strip("rgb() ").split(",")]
    layer = np.zeros((*m.shape, 4), dtype=np.uint8)
    layer[m] = [*rgb, round(255 * color[1])]
    return layer
