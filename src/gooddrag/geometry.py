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

import math

import torch
import torch.nn.functional as F


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
    """(x, y) image pixels -> (row, col) grid cells, rounded (docs/algorithm.md, 3):
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


def unet_multiple(vae_scale_factor: int, num_down_blocks: int) -> int:
    """Image side multiple so every UNet level has an integer size: vae scale * 2^(downsamplings)."""
    return vae_scale_factor * int(math.pow(2, max(num_down_blocks - 1, 0)))
