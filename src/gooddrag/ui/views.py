"""Pictures for the result panes: small ones enlarged as elsewhere, large ones scaled down.

Nothing is clicked in the result panes, so a large picture need not be shown pixel for
pixel there; its downloads (edited.png, the zip) are full size.
"""

from __future__ import annotations

from PIL import Image

from ..outputs import fit_size
from .state import to_display

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
