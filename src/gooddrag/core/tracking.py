"""Point tracking: the methods' nearest-neighbour search (DragDiffusion Eq. 5, :func:`track_points`)
and GoodDrag+'s sub-pixel refinement of it (ours, not in the paper: :func:`track_points_subpixel`).

The methods' tracking returns the best whole cell of the search window. On a coarse grid that makes the stop rule and the final
handles whole cells: on the shapes benchmark the objects fall short of their targets by a median
0.6-0.7 px (docs/benchmarks.md). Here the best cell is refined by a parabola through the matching
cost at it and its two neighbours, along rows and along columns separately (the classic
sub-pixel peak fit of block matching). kornia's ``spatial_soft_argmax2d`` was considered; a soft
argmax over the whole window is pulled towards every other low-cost cell (a flat object has many),
where the parabola only looks at the best cell's neighbourhood.

Frame: points ``(row, col)`` in supervision-grid cells, float ``(N, 2)``; features ``(1, C, h, w)``.
"""

from __future__ import annotations

import torch

from .motion import patch_offsets


def features_at(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Feature vectors (N, C) of ``features`` (1, C, h, w) at integer (row, col) ``points`` (N, 2)."""
    return features[0][:, points[:, 0].long(), points[:, 1].long()].T


def tracking_costs(
    features: torch.Tensor,
    reference_features: torch.Tensor,
    centres: torch.Tensor,
    r2: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The matching cost of every cell of each handle's search window: positions (N, P, 2) long
    (row, col) of the ``(2 r2 + 1)^2`` cells around the integer ``centres`` (N, 2), row-major, and
    the L1 distance over channels (N, P) between ``features`` (1, C, h, w) there and each row of
    ``reference_features`` (N, C); inf for cells outside the map."""
    _, _, h, w = features.shape
    offsets = patch_offsets(r2, features.device).long()  # (P, 2)
    pos = centres.long()[:, None, :] + offsets[None]  # (N, P, 2)
    inside = (pos[..., 0] >= 0) & (pos[..., 0] < h) & (pos[..., 1] >= 0) & (pos[..., 1] < w)
    window = features[0][:, pos[..., 0].clamp(0, h - 1), pos[..., 1].clamp(0, w - 1)]  # (C, N, P)
    dist = (window - reference_features.T[:, :, None]).abs().sum(dim=0)  # (N, P)
    return pos, torch.where(inside, dist, torch.full_like(dist, float("inf")))


def track_points(
    features: torch.Tensor,
    reference_features: torch.Tensor,
    handle_points: torch.Tensor,
    *,
    r2: int,
) -> torch.Tensor:
    """Point tracking (DragDiffusion Eq. 5): nearest neighbour by L1 over channels.

    For each handle, search the (2 r2 + 1)^2 window around its current (integer)
    position in ``features`` (1, C, h, w) for the cell closest to its
    ``reference_features`` row (N, C): the ORIGINAL handle's feature vector on
    the unedited features (:func:`features_at`). Cells outside the map are
    excluded; ties go to the first cell in row-major order. Returns (N, 2),
    integer-valued floats. Runs on device with no host sync.
    """
    pos, dist = tracking_costs(features, reference_features, handle_points, r2)
    best = dist.argmin(dim=-1)  # (N,)
    return pos[torch.arange(pos.shape[0], device=pos.device), best].to(handle_points.dtype)


def parabola_offset(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Offset in ``[-0.5, 0.5]`` of the minimum of the parabola through ``(-1, left)``,
    ``(0, centre)``, ``(1, right)``: ``(left - right) / (2 (left - 2 centre + right))``; 0 where the
    curvature is not positive (no minimum) or a neighbour is missing (inf)."""
    curvature = left - 2 * centre + right
    ok = torch.isfinite(curvature) & (curvature > 0)
    offset = (left - right) / (2 * torch.where(ok, curvature, torch.ones_like(curvature)))
    return torch.where(ok, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


def track_points_subpixel(
    features: torch.Tensor,
    reference_features: torch.Tensor,
    handle_points: torch.Tensor,
    *,
    r2: int,
) -> torch.Tensor:
    """Point tracking with sub-cell refinement: the best cell of the ``(2 r2 + 1)^2`` window
    around each handle's nearest cell (:func:`gooddrag.core.motion.tracking_costs`, as
    :func:`gooddrag.core.motion.track_points`), then moved by :func:`parabola_offset` along rows and
    columns. Returns (N, 2) float (row, col); no host sync."""
    n = handle_points.shape[0]
    pos, dist = tracking_costs(features, reference_features, handle_points.round(), r2)  # (N, P, 2), (N, P)
    side = 2 * r2 + 1
    grid = dist.reshape(n, side, side)
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=float("inf"))  # (N, side + 2, side + 2)
    best = dist.argmin(dim=-1)  # (N,)
    br, bc = best // side + 1, best % side + 1  # in padded coordinates
    idx = torch.arange(n, device=features.device)
    centre = padded[idx, br, bc]
    d_row = parabola_offset(padded[idx, br - 1, bc], centre, padded[idx, br + 1, bc])
    d_col = parabola_offset(padded[idx, br, bc - 1], centre, padded[idx, br, bc + 1])
    cell = pos[idx, best].to(handle_points.dtype)  # (N, 2)
    return cell + torch.stack([d_row, d_col], dim=-1).to(handle_points.dtype)
