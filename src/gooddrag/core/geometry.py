"""Coordinate frames and the boundaries between them.

Three frames appear in this package:

- *image pixels* ``(x, y)``: what the user clicks, on the input image of size
  (H, W); also the working image of size (h_img, w_img) after resizing;
- *latent cells* ``(row, col)`` on the VAE latent (image size / vae scale);
- *supervision cells* ``(row, col)`` on the feature grid of size
  ``sup_res_scale * working size`` where motion supervision and tracking run.

Every function says which frame it takes and returns.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import EMPTY_MASK, GoodDragError, InputsCannotWorkError

logger = logging.getLogger(__name__)


def working_size(height: int, width: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(height, width) of the working image: longer side ``long_side``, aspect kept,
    each side rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    scale = long_side / max(height, width)

    def snap(v: float) -> int:
        return max(multiple, int(round(v / multiple)) * multiple)

    return snap(height * scale), snap(width * scale)


def scale_points(points_xy: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """(x, y) image pixels on an image of ``from_size`` = (H, W) -> on ``to_size``."""
    (h0, w0), (h1, w1) = from_size, to_size
    factor = torch.tensor([w1 / w0, h1 / h0], dtype=points_xy.dtype, device=points_xy.device)
    return points_xy * factor


def image_to_grid(points_xy: torch.Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> torch.Tensor:
    """(x, y) image pixels -> (row, col) grid cells, rounded (docs/method.md, "Pipeline" 1):
    ``(row, col) = (round(y * h / H), round(x * w / W))``. Returns float (N, 2)."""
    (H, W), (h, w) = image_size, grid_size
    rows = torch.round(points_xy[:, 1] * h / H)
    cols = torch.round(points_xy[:, 0] * w / W)
    return torch.stack([rows, cols], dim=-1).float()


def grid_to_image(points_rc: torch.Tensor, grid_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """(row, col) grid cells -> (x, y) image pixels (inverse of :func:`image_to_grid` up to rounding)."""
    (h, w), (H, W) = grid_size, image_size
    xs = points_rc[:, 1] * W / w
    ys = points_rc[:, 0] * H / h
    return torch.stack([xs, ys], dim=-1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary mask (H, W) or (1, 1, H, W) -> (1, 1, h, w) float by nearest neighbour."""
    if mask.dim() == 2:
        mask = mask[None, None]
    return F.interpolate(mask.float(), size=size, mode="nearest")


def sup_grid_size(image_size: tuple[int, int], sup_res_scale: float) -> tuple[int, int]:
    """Size of the supervision grid for a working image of ``image_size`` (official: half)."""
    return int(image_size[0] * sup_res_scale), int(image_size[1] * sup_res_scale)


def vae_scale_factor(vae_config) -> int:
    """Image px per latent cell of an AutoencoderKL config (a mapping with ``block_out_channels``):
    2 per block after the first, as diffusers' pipelines compute it."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def unet_multiple(vae_scale_factor: int, num_down_blocks: int) -> int:
    """Image side multiple so every UNet level has an integer size: vae scale * 2^(downsamplings)."""
    return vae_scale_factor * int(math.pow(2, max(num_down_blocks - 1, 0)))


def fit_mask(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A bool mask resized to ``image_size`` = (H, W) by nearest neighbour, with a
    warning when its size differs (the user should know their mask was changed)."""
    H, W = image_size
    if mask.shape == (H, W):
        return mask
    logger.warning(
        "mask is %dx%d but the image is %dx%d: resized to the image (nearest neighbour)",
        mask.shape[1], mask.shape[0], W, H,
    )
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) > 0


def check_points(handle_points, target_points, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate (x, y) handle/target points against an image of ``image_size`` = (H, W).

    Returns both as float (N, 2) arrays; raises a one-line error naming the bad point.
    """
    H, W = image_size
    arrays = []
    for name, pts in (("handle", handle_points), ("target", target_points)):
        arr = np.asarray(pts, dtype=np.float64)
        if arr.size == 0:
            raise GoodDragError("no points given: at least one handle and one target are needed")
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise GoodDragError(f"{name} points must be a list of (x, y) pairs, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise GoodDragError(f"{name} points contain a non-finite coordinate")
        arrays.append(arr)
    handles, targets = arrays
    if len(handles) != len(targets):
        raise GoodDragError(f"{len(handles)} handle point(s) but {len(targets)} target point(s)")
    for kind, pts in (("handle", handles), ("target", targets)):
        for i, (x, y) in enumerate(pts, 1):
            if not (0 <= x < W and 0 <= y < H):
                raise GoodDragError(f"{kind} point {i} ({x:g}, {y:g}) is outside the {W}x{H} image")
    for i, (h, t) in enumerate(zip(handles, targets), 1):
        if np.allclose(h, t):
            raise GoodDragError(f"handle point {i} ({h[0]:g}, {h[1]:g}) equals its target")
    return handles, targets




def check_mask_covers_points(mask: np.ndarray, handle_points: np.ndarray, target_points: np.ndarray) -> None:
    """Refuse a given mask that cannot work (docs/method.md, "Inputs that cannot work").

    mask: (H, W) bool at the input image's size, True = may change; points: (N, 2)
    (x, y) input-image pixels, already checked to lie inside the image. A point is
    inside the editable region when the pixel that holds it, ``mask[int(y), int(x)]``,
    is. Raises :class:`InputsCannotWorkError` naming the first pair that fails.
    """
    if not np.any(mask):
        raise InputsCannotWorkError(EMPTY_MASK)
    H, W = mask.shape
    for i, (handle, target) in enumerate(zip(handle_points, target_points), 1):
        for kind, (x, y) in (("handle", handle), ("target", target)):
            if not mask[min(int(y), H - 1), min(int(x), W - 1)]:
                raise InputsCannotWorkError(
                    f"pair {i}: its {kind} ({x:g}, {y:g}) lies outside the mask's editable region "
                    "(white = may change); paint the mask over the handle and its target, or give no mask"
                )
