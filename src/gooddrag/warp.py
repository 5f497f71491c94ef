"""GoodDrag+ (ours, not in the paper): move the masked region of the inverted latent along the
drag before AIDD starts, by whole latent cells.

Why: on the shapes benchmark an object moved by whole cells in the inverted latent comes back
with its shape (docs/benchmarks.md, "Moving an object by hand in the inverted latent": 22.5-22.9
dB in the mask), while gradient steps on the latent smear it (16-17 dB). FastDrag (Zhao et al.,
NeurIPS 2024, arXiv 2405.15769) warps the latent in one step with nearest-neighbour filling; here
the warp only gives AIDD a head start, and motion supervision then corrects the residual
(sub-cell) motion.

Frames: every point and displacement here is ``(row, col)`` in *latent cells*, float ``(N, 2)``;
latents are ``(1, c, h, w)``; masks ``(1, 1, h, w)`` float, 1 = may change. Pure functions.

Why nearest whole cells and not ``grid_sample``/kornia's bilinear warps: an inverted latent is
mostly noise, and interpolating between cells lowers its variance, which the model renders as a
faded object (the same benchmark: 19-20 dB for a bilinear sub-cell move).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

FILLS = ("keep", "neighbours", "noise")
"""How cells the moved region leaves behind (inside the mask, nothing moved onto them) are filled:
``keep`` their own latent (the object's remnant stays), ``neighbours`` the latent of the nearest
cell outside the mask (background), ``noise`` fresh Gaussian noise with the per-channel mean and
standard deviation of the latent outside the mask."""


def drag_field(handle_points: torch.Tensor, target_points: torch.Tensor, size: tuple[int, int],
               power: float = 2.0) -> torch.Tensor:
    """Per-cell displacement ``(h, w, 2)`` (row, col cells): each pair's ``target - handle``,
    blended by inverse distance (to the power ``power``) from the cell to each *target*, so
    that a backward warp (:func:`warp_latent`) is exact at every target. One pair, or pairs
    that share a displacement, give that displacement everywhere (a rigid move)."""
    h, w = size
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    cells = torch.stack([rows, cols], dim=-1).reshape(-1, 1, 2)  # (h w, 1, 2)
    targets = target_points.detach().to("cpu", torch.float64)
    moves = targets - handle_points.detach().to("cpu", torch.float64)  # (N, 2)
    dist = (cells - targets[None]).norm(dim=-1)  # (h w, N)
    on_target = dist < 1e-9
    weights = torch.where(on_target, torch.ones_like(dist), 1.0 / dist.clamp_min(1e-9) ** power)
    weights = torch.where(on_target.any(dim=1, keepdim=True), on_target.to(weights.dtype), weights)
    field = (weights @ moves) / weights.sum(dim=1, keepdim=True)  # (h w, 2)
    return field.reshape(h, w, 2)


def warp_latent(latent: torch.Tensor, field: torch.Tensor, mask: torch.Tensor, *, fill: str = "neighbours",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward nearest-cell warp of the masked region: every cell ``p`` inside ``mask`` takes the
    latent of ``p - round(field[p])`` when that cell is inside the image and the mask; the other
    cells of the mask are *vacated* and filled by ``fill`` (:data:`FILLS`). Cells outside the mask
    are never written, and content is never taken from outside it.

    latent: (1, c, h, w); field: (h, w, 2) row, col cells (:func:`drag_field`); mask: (1, 1, h, w),
    1 = may change; generator: for ``fill="noise"`` (CPU generator; drawn on the CPU so the noise
    is the same on every device). Returns (warped latent (1, c, h, w), vacated (h, w) bool).
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    _, c, h, w = latent.shape
    device = latent.device
    inside = mask[0, 0].to(device) > 0.5  # (h, w)
    shift = torch.round(field.to(device)).long()  # (h, w, 2) whole cells
    rows = torch.arange(h, device=device)[:, None].expand(h, w)
    cols = torch.arange(w, device=device)[None, :].expand(h, w)
    src_r, src_c = rows - shift[..., 0], cols - shift[..., 1]
    in_image = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
    src_r, src_c = src_r.clamp(0, h - 1), src_c.clamp(0, w - 1)
    from_mask = in_image & inside[src_r, src_c]
    take = inside & from_mask  # (h, w): cells that receive moved content
    vacated = inside & ~from_mask
    moved = latent[0][:, src_r, src_c]  # (c, h, w)
    out = torch.where(take[None], moved, latent[0])
    if fill != "keep" and bool(vacated.any()):
        out = torch.where(vacated[None], _filler(latent[0], inside, fill, generator), out)
    return out[None], vacated


def _filler(latent: torch.Tensor, inside: torch.Tensor, fill: str, generator) -> torch.Tensor:
    """(c, h, w) values for vacated cells: see :data:`FILLS`. ``inside`` (h, w) bool: the mask."""
    c, h, w = latent.shape
    outside = ~inside
    if not bool(outside.any()):  # the mask covers everything: no background to copy from
        outside = torch.ones_like(inside)
    if fill == "noise":
        bg = latent[:, outside]  # (c, n)
        noise = torch.randn((c, h, w), generator=generator, dtype=torch.float32).to(latent.device, latent.dtype)
        return bg.mean(dim=1)[:, None, None] + bg.std(dim=1)[:, None, None] * noise
    # nearest outside cell, by grid distance (ties: the first in row-major order)
    grid = torch.stack(torch.meshgrid(torch.arange(h, device=latent.device), torch.arange(w, device=latent.device),
                                      indexing="ij"), dim=-1).reshape(-1, 2).to(torch.float32)  # (h w, 2)
    sources = grid[outside.reshape(-1)]  # (n, 2)
    nearest = torch.empty(h * w, dtype=torch.long, device=latent.device)
    for start in range(0, h * w, 4096):  # chunks: an SDXL latent has 16384 cells
        nearest[start:start + 4096] = torch.cdist(grid[start:start + 4096], sources).argmin(dim=1)
    picked = sources[nearest].long()  # (h w, 2)
    return latent[:, picked[:, 0], picked[:, 1]].reshape(c, h, w)


def warped_points(points: torch.Tensor, field: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Where :func:`warp_latent` takes ``points`` (N, 2) (row, col) supervision cells: by the whole
    latent cells of ``field`` (h, w, 2), times ``scale`` (2,) supervision cells per latent cell.
    The backward warp fills cell ``p`` from ``p - round(field[p])``, so the point's latent cell ``s``
    lands at ``p = s + round(field[p])``, found by one fixed-point step from ``p = s + round(field[s])``
    (exact for a rigid move, where the field is the same everywhere)."""
    h, w, _ = field.shape
    shift = torch.round(field.detach().to("cpu", torch.float64))  # (h, w, 2) latent cells
    pts = points.detach().to("cpu", torch.float64)
    scale = scale.to(torch.float64)

    def at(cells):  # shift at (N, 2) latent cells, clamped into the latent
        r, c = cells[:, 0].long().clamp(0, h - 1), cells[:, 1].long().clamp(0, w - 1)
        return shift[r, c]

    cell = (pts / scale).round()
    step = at(cell + at(cell))
    return (pts + step * scale).to(points.dtype).to(points.device)


def warp_for_drag(latents: torch.Tensor, handle_points: torch.Tensor, target_points: torch.Tensor,
                  mask: torch.Tensor, sup_size: tuple[int, int], config) -> tuple[torch.Tensor, torch.Tensor]:
    """The GoodDrag+ start of the drag (``config.latent_warp``): ``latents`` (1, c, h, w) warped
    along the pairs' drag field inside ``mask`` (1, 1, h, w) with ``config.warp_fill``, and the
    handles (N, 2) (row, col supervision cells, like ``target_points``; grid ``sup_size``) where
    the warp took them. Unchanged, with a log line, when the mask covers the whole latent: with
    no background to keep, the warp would slide the whole picture."""
    _, _, h, w = latents.shape
    if bool((mask > 0.5).all()):
        logger.info("latent_warp skipped: the mask covers the whole image (paint the region that may change)")
        return latents, handle_points
    scale = torch.tensor([sup_size[0] / h, sup_size[1] / w], dtype=torch.float64)
    field = drag_field(handle_points.detach().cpu().double() / scale, target_points.detach().cpu().double() / scale,
                       (h, w))
    generator = torch.Generator().manual_seed(config.seed)
    warped, _ = warp_latent(latents, field, mask, fill=config.warp_fill, generator=generator)
    return warped, warped_points(handle_points, field, scale)
