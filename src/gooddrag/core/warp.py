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

import numpy as np
import torch
from PIL import Image

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
    field = field_for(config.warp_field, handle_points.detach().cpu().double() / scale,
                      target_points.detach().cpu().double() / scale, mask[0, 0].cpu() > 0.5)
    generator = torch.Generator().manual_seed(config.seed)
    warped, _ = warp_latent(latents, field, mask, fill=config.warp_fill, generator=generator)
    return warped, warped_points(handle_points, field, scale)


# ------------------------------------------------- GoodDrag+ deformation field (ours)
WARP_FIELDS = ("translations", "affine")
"""How the pairs become a warp: ``translations`` blends each pair's displacement by inverse
distance (:func:`drag_field`: a rigid move for one pair); ``affine`` moves each connected region
of the mask by the one map its pairs fit (:func:`pair_affine`: a translation for one pair, a
turn + scale + move for two, an affine map for three or more not on one line), so that a turn,
a growth or a stretch is followed, not rounded to a blend of translations."""


def pair_affine(handles: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(2, 3) float64 map ``[A | b]`` with ``targets ~ A handles + b`` for (N, 2) points in any one
    frame: one pair, a translation; two (or points on one line), the similarity (turn, uniform
    scale, move) of least squares, exact for two; three or more, the affine map of least squares.
    Pure least squares (``torch.linalg.lstsq``), as in moving-least-squares image deformation
    (Schaefer et al., SIGGRAPH 2006) with uniform weights."""
    src, dst = handles.detach().to("cpu", torch.float64), targets.detach().to("cpu", torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    if len(src) == 1:
        return torch.cat([eye, (dst - src).T], dim=1)
    centred = src - src.mean(dim=0)
    s = torch.linalg.svdvals(centred)
    if len(src) >= 3 and s[-1] > 0.05 * s[0]:  # spread in both directions: a full affine map
        design = torch.cat([src, torch.ones(len(src), 1, dtype=torch.float64)], dim=1)  # (N, 3)
        return torch.linalg.lstsq(design, dst).solution.T  # (2, 3)
    # similarity [[a, -b], [b, a]] p + t: two equations per pair in (a, b, tx, ty)
    x, y = src[:, 0], src[:, 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    design = torch.cat([torch.stack([x, -y, one, zero], 1), torch.stack([y, x, zero, one], 1)])  # (2N, 4)
    a, b, tx, ty = torch.linalg.lstsq(design, torch.cat([dst[:, 0], dst[:, 1]])[:, None]).solution[:, 0]
    return torch.stack([torch.stack([a, -b, tx]), torch.stack([b, a, ty])])


def mask_regions(mask: torch.Tensor) -> torch.Tensor:
    """(h, w) long labels of the 8-connected regions of a (h, w) bool mask: 0 outside, 1..K inside
    (kornia's connected components, run until every region is labelled: h * w iterations at most)."""
    from kornia.contrib import (
        connected_components,  # heavy import, only when this option is on
    )

    h, w = mask.shape
    raw = connected_components(mask.to("cpu", torch.float32)[None, None], num_iterations=h * w)[0, 0]
    ids = torch.unique(raw[mask.cpu()])
    labels = torch.zeros((h, w), dtype=torch.long)
    for k, v in enumerate(ids.tolist(), 1):
        labels[(raw == v) & mask.cpu()] = k
    return labels


def region_maps(handle_points: torch.Tensor, target_points: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """{region label: (2, 3) map} of the regions that hold a handle (row, col cells of ``labels``'s
    grid); each region's map is :func:`pair_affine` of its pairs (the pair's handle cell, or its
    target cell when the handle's is outside every region, names the region)."""
    h, w = labels.shape
    owners: dict[int, list[int]] = {}
    for j, (hp, tp) in enumerate(zip(handle_points.detach().cpu(), target_points.detach().cpu())):
        for p in (hp, tp):
            r, c = int(p[0].round().clamp(0, h - 1)), int(p[1].round().clamp(0, w - 1))
            if labels[r, c] > 0:
                owners.setdefault(int(labels[r, c]), []).append(j)
                break
    return {k: pair_affine(handle_points[js], target_points[js]) for k, js in owners.items()}


def affine_field(handle_points: torch.Tensor, target_points: torch.Tensor, mask: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    """Backward displacement ``(h, w, 2)`` (row, col cells of ``mask``'s grid, (h, w) bool): every
    cell ``p`` of a region with pairs takes its content from ``T^-1(p)``, ``T`` the region's map
    (:func:`region_maps`), i.e. ``field[p] = p - T^-1(p)`` as :func:`warp_latent` reads it; 0 elsewhere.
    labels: the regions (:func:`mask_regions`) when already known (e.g. found on a coarser grid)."""
    h, w = mask.shape
    labels = mask_regions(mask) if labels is None else labels
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    cells = torch.stack([rows, cols], dim=-1)  # (h, w, 2)
    field = torch.zeros((h, w, 2), dtype=torch.float64)
    for k, T in region_maps(handle_points, target_points, labels).items():
        A, b = T[:, :2], T[:, 2]
        inside = labels == k
        source = (cells[inside] - b) @ torch.linalg.inv(A).T  # (n, 2)
        field[inside] = cells[inside] - source
    return field


IMAGE_FILLS = ("behind", "around")
"""What :func:`warp_image` gives a masked pixel whose source lies outside the mask (what the moved
content uncovers): ``behind`` the image at that source anyway (the background behind the moved
content, or another object that lies there), ``around`` pixels grown in from around the mask
(:func:`fill_from_outside`)."""


def warp_image(image: torch.Tensor, field: torch.Tensor, mask: torch.Tensor, fill: str = "behind") -> torch.Tensor:
    """Backward bilinear warp of an image's masked pixels: pixel ``p`` inside ``mask`` ((H, W) bool)
    takes ``image`` at ``p - field[p]`` (row, col px, (H, W, 2)), the border pixel beyond the image;
    with ``fill="around"`` a masked pixel whose source lies outside the mask is filled from the pixels
    around the mask instead (:data:`IMAGE_FILLS`); pixels outside the mask are kept. image:
    (1, 3, H, W) float. In pixel space, a sub-cell move or a turn is rendered exactly up to bilinear
    sampling (the latent warp can only move whole cells). torch's ``grid_sample`` samples."""
    if fill not in IMAGE_FILLS:
        raise ValueError(f"fill must be one of {', '.join(IMAGE_FILLS)}, got {fill!r}")
    _, _, H, W = image.shape
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
    src_r, src_c = rows - field[..., 0], cols - field[..., 1]
    grid = torch.stack([2 * src_c / max(W - 1, 1) - 1, 2 * src_r / max(H - 1, 1) - 1], dim=-1)  # (H, W, 2) x, y
    sampled = torch.nn.functional.grid_sample(image, grid[None].to(image.dtype), mode="bilinear",
                                              padding_mode="border", align_corners=True)
    out = torch.where(mask[None, None], sampled, image)
    if fill == "behind":
        return out
    r, c = src_r.round().long(), src_c.round().long()
    in_image = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    vacated = mask & ~(in_image & mask[r.clamp(0, H - 1), c.clamp(0, W - 1)])
    if bool(vacated.any()):
        out = torch.where(vacated[None, None], fill_from_outside(image, mask, vacated), out)
    return out


def fill_from_outside(image: torch.Tensor, mask: torch.Tensor, needed: torch.Tensor | None = None) -> torch.Tensor:
    """``image`` (1, 3, H, W) with the pixels of ``mask`` ((H, W) bool) filled by growing the pixels
    around it inwards: each round, an unknown pixel next to known ones takes their mean (3x3), until
    every pixel of ``needed`` ((H, W) bool, default the whole mask) is filled. Only the mask's
    bounding box (1 px wider) is worked on. A smooth background comes back smooth; the denoiser
    redraws the rest. Written here because it is a few lines of convolution; OpenCV's inpainting
    would do better on photos but is not a dependency."""
    needed = mask if needed is None else needed & mask
    if not bool((~mask).any()) or not bool(needed.any()):
        return image
    rows, cols = torch.nonzero(mask, as_tuple=True)
    H, W = mask.shape
    r0, r1 = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 2, H)
    c0, c1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 2, W)
    box = (..., slice(r0, r1), slice(c0, c1))
    known = (~mask[box[1:]]).to(image.dtype)[None, None]  # (1, 1, h, w)
    want = needed[box[1:]]
    values = image[box] * known
    kernel = torch.ones((1, 1, 3, 3), dtype=image.dtype)
    c = values.shape[1]
    for _ in range((r1 - r0) + (c1 - c0)):
        if bool(known[0, 0][want].all()):
            break
        count = torch.nn.functional.conv2d(known, kernel, padding=1)
        total = torch.nn.functional.conv2d(values.reshape(c, 1, *values.shape[-2:]), kernel, padding=1)
        grow = (known == 0) & (count > 0)
        values = torch.where(grow, total.reshape(values.shape) / count.clamp_min(1), values)
        known = torch.where(grow, torch.ones_like(known), known)
    out = image.clone()
    out[box] = torch.where(known > 0, values, image[box])
    return out


def field_for(kind: str, handle_points: torch.Tensor, target_points: torch.Tensor, mask: torch.Tensor,
              labels: torch.Tensor | None = None) -> torch.Tensor:
    """The backward field of ``kind`` (:data:`WARP_FIELDS`) on ``mask``'s grid ((h, w) bool); points
    (N, 2) row, col cells of that grid; labels: its regions, when known."""
    if kind not in WARP_FIELDS:
        raise ValueError(f"warp field must be one of {', '.join(WARP_FIELDS)}, got {kind!r}")
    if kind == "affine":
        return affine_field(handle_points, target_points, mask, labels)
    return drag_field(handle_points, target_points, tuple(mask.shape))


def image_warp_for_drag(working_image, handle_points_xy: torch.Tensor, target_points_xy: torch.Tensor,
                        mask: torch.Tensor, sup_size: tuple[int, int], config):
    """The GoodDrag+ start of the drag in pixel space (``config.image_warp``): the working image
    (PIL, (W, H)) with its masked region warped by ``config.warp_field`` (:func:`warp_image`;
    the mask (1, 1, h, w) latent cells brought to pixels by nearest neighbour), and the handles
    (N, 2) row, col supervision cells (grid ``sup_size``) where the warp takes them. The points are
    (N, 2) (x, y) pixels of the WORKING image, not rounded to cells: a 2 px drag rounded to whole
    cells would misfit a turn or a scale. The caller encodes and inverts the warped image.
    Unchanged, with a log line, when the mask covers the whole image (the warp would slide the
    whole picture)."""
    W, H = working_image.size
    px_to_sup = torch.tensor([sup_size[0] / H, sup_size[1] / W], dtype=torch.float64)
    src = torch.as_tensor(handle_points_xy, dtype=torch.float64).flip(-1)  # (N, 2) row, col px
    dst = torch.as_tensor(target_points_xy, dtype=torch.float64).flip(-1)
    if bool((mask > 0.5).all()):
        logger.info("image_warp skipped: the mask covers the whole image (paint the region that may change)")
        return working_image, src * px_to_sup
    cells = mask[0, 0].cpu() > 0.5  # (h, w) latent cells
    pixels = torch.nn.functional.interpolate(mask.float().cpu(), size=(H, W), mode="nearest")[0, 0] > 0.5
    # regions found on the latent grid and brought to pixels as the mask is (the same regions, and
    # connected components cost one pass per cell of the longest path: cheap on 64x64, not on 512x512)
    labels = torch.nn.functional.interpolate(mask_regions(cells)[None, None].float(), size=(H, W),
                                             mode="nearest")[0, 0].long()
    field = field_for(config.warp_field, src, dst, pixels, labels)
    image = torch.from_numpy(np.asarray(working_image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    warped = warp_image(image, field, pixels, config.image_warp_fill)
    out = Image.fromarray((warped[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8))
    if config.warp_field == "affine":
        maps = region_maps(src, dst, labels)
        moved = src.clone()
        for j, p in enumerate(src):
            r, c = int(p[0].round().clamp(0, H - 1)), int(p[1].round().clamp(0, W - 1))
            T = maps.get(int(labels[r, c]))
            if T is not None:
                moved[j] = T[:, :2] @ p + T[:, 2]
    else:  # the inverse-distance field is exact at every target
        moved = dst
    return out, moved * px_to_sup
