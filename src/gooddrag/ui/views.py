"""Pictures for the result panes: small ones enlarged as elsewhere, large ones scaled down.

Nothing is clicked in the result panes, so a large picture need not be shown pixel for
pixel there; its downloads (edited.png, the zip) are full size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..outputs import fit_size
from .state import mask_layer, to_display

VIEW_MAX_SIDE = 1024
"""The result panes (result, before/after) show large pictures scaled down to fit this many
pixels: the page's copies of a 12-megapixel result took seconds to encode. Downloads are full size."""


def to_view(image: Image.Image, scale: int, max_side: int = VIEW_MAX_SIDE) -> Image.Image:
    """A picture for a result pane: :func:`to_display` enlarged when small, scaled down to fit
    ``max_side`` when large (nothing is clicked there, so the frame need not be exact)."""
    if scale > 1:
        return to_display(image, scale)
    image = image.convert("RGB")
    size = fitted_size(image.size, max_side)
    return image if size == image.size else image.resize(size, Image.BILINEAR, reducing_gap=2.0)


def fitted_size(size: tuple[int, int], max_side: int = VIEW_MAX_SIDE) -> tuple[int, int]:
    """(w, h) scaled down (never up) to fit ``max_side``: a large picture's size in a result pane."""
    return fit_size(size, max_side)


# The mask editor shows a large picture scaled down the same way: its value (background and
# layers) travels with every event that reads it, and at 12 megapixels that took seconds each
# time. The painted layers are mapped back to the picture's pixels by mask_from_layers.
def editor_size(size: tuple[int, int], scale: int) -> tuple[int, int]:
    """The mask editor's picture size for a ``size`` = (w, h) input shown at ``scale``."""
    return (size[0] * scale, size[1] * scale) if scale > 1 else fitted_size(size)


def editor_layer(mask, scale: int):
    """A bool (H, W) mask as an editor layer at :func:`editor_size` (None for no mask)."""
    if mask is None or scale > 1:
        return mask_layer(mask, scale)
    size = editor_size(mask.shape[::-1], 1)
    if size != mask.shape[::-1]:
        mask = np.asarray(Image.fromarray(np.asarray(mask, dtype=bool)).resize(size, Image.NEAREST))
    return mask_layer(mask, 1)
