"""FastDrag's one-step latent warp (Zhao et al., NeurIPS 2024), as pure functions on tensors.

Written from a reading of the authors' ``drag_stretch_multipoint_ratio_interp`` (XuanjiaZ/FastDrag,
snapshot def3c4e, utils/continuous_drag.py:125-215) and its helpers; research/parity_fastdrag.py checks
that :func:`drag_warp` gives bit-identical latents. Nothing here is their code: the arithmetic is done
in the same order and with the same torch operations on the same dtypes, because the result of a
``round`` (where a cell lands) and the fill's sums depend on it.

The warp acts inside the mask only (``cells``: the nonzero cells of the (1, 1, h, w) latent mask, in
row-major order):

1. every masked cell of a copy of the latent is set to the ``fill``'s start value (:data:`FILLS`);
2. the circle around the mask's bounding box: centre O = the box's centre, radius R = |O - its
   top-left corner| (torch's ``pairwise_distance``, whose eps 1e-6 is part of R);
3. for each cell C and pair i (handle A_i, target B_i in latent cells = supervision cells / factor,
   never rounded): P = where the ray from A_i through C meets the circle, ``s_i = |PC| / |AP|`` (1 at A_i,
   0 on the circle), move_i = s_i (B_i - A_i);
4. the pairs' moves are blended with weights ``1 / (|C - A_i| + 1e-4)``, normalised; C goes to
   ``round(C + move)``, clamped into the latent;
5. the first cell to land on a place writes its ORIGINAL value there; later ones are dropped;
6. ``interpolation``: every cell whose channel 0 is exactly 0 (the holes) is filled, in raster order and
   in place, from the nearest cell with a nonzero channel 0 to its left, right, above and below,
   weighted 1/k for a neighbour k cells away: a hole filled earlier (left, above) feeds later ones.

A cell whose move is not finite (C exactly on a handle: 0/0; a handle outside the circle: sqrt of a
negative) goes nowhere, as in their code (``int(nan)`` raises, the stale place of the cell before is
already taken); when it is the FIRST cell, their code crashes and :func:`moved_cells` refuses with
InputsCannotWorkError. The loops read single elements: run the warp on a CPU copy of the latent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputsCannotWorkError

FILLS = ("interpolation", "0", "ori", "random")
"""What the masked cells start as: ``interpolation`` (0, then the holes are filled from their
neighbours; the authors' UI default, drag_ui.py:66), ``0`` (0, left so), ``ori`` (the original latent,
not cleared) or ``random`` (uniform [0, 1) noise) (continuous_drag.py:127-134)."""

BLEND_EPS = 1e-4
"""Added to |C - A_i| in the pairs' inverse-distance weights (continuous_drag.py:152, :155)."""


def latent_mask(sup_mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h_sup, w_sup) float 0/1 supervision-grid mask -> (1, 1, h, w) bilinear resize, no
    antialiasing, corners not aligned (torchvision 0.15's ``resize`` of a tensor, ui_utils.py:342);
    cells > 0 are in the warp."""
    return F.interpolate(sup_mask.float(), size=latent_size, mode="bilinear", align_corners=False,
                         antialias=False)


def bounding_circle(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, h, w) mask -> the circle around its nonzero cells' bounding box: (2,) float32 centre
    (row, col) and 0-d float32 radius (continuous_drag.py:38-49, :95-99)."""
    cells = torch.nonzero(mask)[:, -2:]
    low, high = cells.min(dim=0)[0], cells.max(dim=0)[0]
    corner = torch.Tensor((low[0], low[1])).to(mask.device)
    centre = torch.Tensor(((corner[0] + high[0]) / 2, (corner[1] + high[1]) / 2)).to(mask.device)
    return centre, F.pairwise_distance(centre, corner)


def ray_scale(cell: torch.Tensor, handle: torch.Tensor, from_centre: torch.Tensor, centre_distance: torch.Tensor,
              radius: torch.Tensor) -> torch.Tensor:
    """0-d ``|PC| / |AP|`` for one cell C (2,) and handle A (2,), P the ray A -> C's exit from the circle
    (from_centre = A - O, centre_distance = |A - O|) (continuous_drag.py:102-117). NaN when C == A."""
    along = cell - handle
    length = torch.norm(along)
    direction = along / length
    foot = torch.dot(along, from_centre) / length  # signed distance from A to the foot of O's perpendicular
    chord = torch.sqrt(radius ** 2 - centre_distance ** 2 + foot ** 2)
    to_circle = (chord - foot) * direction
    return torch.norm(along - to_circle) / torch.norm(to_circle)


def blended_move(cell: torch.Tensor, pairs: list[tuple[torch.Tensor, ...]], radius: torch.Tensor) -> torch.Tensor:
    """(2,) float move of one cell: each pair's ``ray_scale x shift`` blended by normalised weights
    ``1 / (|C - A_i| + 1e-4)`` (continuous_drag.py:146-171). ``pairs``: (A, shift, A - O, |A - O|) each."""
    moves, weights = [], []
    for handle, shift, from_centre, centre_distance in pairs:
        moves.append(ray_scale(cell, handle, from_centre, centre_distance, radius) * shift)
        weights.append(1 / (torch.norm(cell - handle) + BLEND_EPS))
    moves_t = torch.cat([m.unsqueeze(0) for m in moves])  # (P, 2)
    weights_t = torch.cat([w.unsqueeze(0) for w in weights])  # (P,)
    share = weights_t / weights_t.sum()
    return (share * moves_t.T).T.sum(dim=0)


def pair_geometry(handles: torch.Tensor, targets: torch.Tensor, centre: torch.Tensor,
                  factor: float) -> list[tuple[torch.Tensor, ...]]:
    """(N, 2) float32 handles and targets in supervision cells -> per pair (A, B - A, A - O, |A - O|),
    A and B in latent cells (divided by ``factor``, not rounded)."""
    pairs = []
    for handle, target in zip(handles, targets):
        a = handle.to(centre.device) / factor
        b = target.to(centre.device) / factor
        pairs.append((a, b - a, a - centre, torch.norm(a - centre)))
    return pairs


def moved_cells(mask: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor,
                factor: float = 4.0) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The warp's writes, in order: ((row, col) source, (row, col) destination) per masked cell that
    writes (the first to land on a destination; a cell with a non-finite move writes nothing).
    Raises InputsCannotWorkError where the authors' code would crash (the first cell's move is not finite)."""
    h, w = mask.shape[-2:]
    centre, radius = bounding_circle(mask)
    pairs = pair_geometry(handles, targets, centre, factor)
    taken: set[tuple[int, int]] = set()
    writes = []
    for j, cell in enumerate(torch.nonzero(mask)[:, -2:]):
        row, col = torch.round(cell + blended_move(cell, pairs, radius)).tolist()
        if not (math.isfinite(row) and math.isfinite(col)):
            if j == 0:
                raise InputsCannotWorkError(
                    "FastDrag's warp has no place for the mask's first cell (a handle on a latent cell's centre "
                    "or outside the circle around the mask): move the handle by a pixel or widen the mask")
            continue  # their stale place of the cell before: always taken already
        dest = (min(max(int(row), 0), h - 1), min(max(int(col), 0), w - 1))
        if dest in taken:
            continue
        taken.add(dest)
        writes.append(((int(cell[0]), int(cell[1])), dest))
    return writes


def fill_holes(x: torch.Tensor) -> torch.Tensor:
    """In place on a (B, c, h, w) CPU tensor: every cell whose channel 0 is exactly 0 at the start is
    set, in raster order, to the 1/k-weighted mean of the nearest cells with a nonzero channel 0 to its
    left, right, above and below (k: their distance), reading cells filled before it
    (continuous_drag.py:51-93). A hole with no such neighbour stays 0. Returns ``x``."""
    _, _, h, w = x.shape
    for b in range(x.shape[0]):
        live = x[b, 0].numpy()  # shares x's memory: fills show up in later searches
        holes = (live == 0).copy()
        for i in range(h):
            for j in range(w):
                if not holes[i, j]:
                    continue
                values, weights = [], []
                for di, dj, steps in ((0, -1, j), (0, 1, w - 1 - j), (-1, 0, i), (1, 0, h - 1 - i)):
                    for k in range(1, steps + 1):
                        if live[i + di * k, j + dj * k] != 0:
                            values.append(x[b, :, i + di * k, j + dj * k])
                            weights.append(1 / k)
                            break
                if weights:
                    x[b, :, i, j] = sum(wk * v for wk, v in zip(weights, values)) / sum(weights)
    return x


def drag_warp(latents: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              fill: str = "interpolation", factor: float = 4.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """FastDrag's warp of a (B, c, h, w) CPU latent inside the (1, 1, h, w) mask (nonzero = in), by
    the (N, 2) float32 handles and targets in supervision cells (``factor`` cells per latent cell).
    ``fill`` (:data:`FILLS`); ``random`` draws from ``generator``. Returns a new tensor."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
    inside = (mask > 0).repeat(1, latents.shape[1], 1, 1)
    out = latents.clone()
    if fill in ("interpolation", "0"):
        out[inside] = 0
    elif fill == "random":
        noise = torch.rand(latents.shape, generator=generator, dtype=latents.dtype)
        out[inside] = noise.to(latents.device)[inside]
    for (src_row, src_col), (row, col) in moved_cells(mask, handles, targets, factor):
        out[:, :, row, col] = latents[:, :, src_row, src_col]
    if fill == "interpolation":
        fill_holes(out)
    return out


def first_cell_has_place(mask: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor,
                         factor: float = 4.0) -> bool:
    """False where :func:`moved_cells` would refuse (the mask's first cell has a non-finite move): a
    check to run before any work."""
    centre, radius = bounding_circle(mask)
    cell = torch.nonzero(mask)[0, -2:]
    move = blended_move(cell, pair_geometry(handles, targets, centre, factor), radius)
    return bool(torch.isfinite(torch.round(cell + move)).all())


__all__ = ["FILLS", "BLEND_EPS", "latent_mask", "bounding_circle", "ray_scale", "blended_move", "pair_geometry",
           "moved_cells", "fill_holes", "drag_warp", "first_cell_has_place"]
