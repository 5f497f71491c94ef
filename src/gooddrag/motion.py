"""Motion supervision and point tracking as pure functions on tensors.

Frame: every point here is ``(row, col)`` in *supervision-grid cells*, a float
tensor of shape ``(N, 2)``; feature maps are ``(1, C, h, w)`` on that grid.
Conversion from user (x, y) image pixels happens in :mod:`gooddrag.geometry`.

References: DragDiffusion (Shi et al., CVPR 2024), Eq. 3-5; GoodDrag (Zhang et
al., ICLR 2025), Sec. 3.2 "information-preserving motion supervision".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_offsets(radius: int, centered: bool, device=None) -> torch.Tensor:
    """Cell offsets ``(P, 2)`` of a square patch around a point, row-major.

    ``centered=True``: the (2r+1)^2 patch rows/cols -r..r (DragDiffusion).
    ``centered=False``: the (2r)^2 patch rows/cols -r..r-1 (GoodDrag's
    half-open slice ``[h-r, h+r)``, whence its ``(2*r1)^2`` factor).
    """
    stop = radius + 1 if centered else radius
    r = torch.arange(-radius, stop, device=device, dtype=torch.float32)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


def sample_patches(features: torch.Tensor, points: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a patch of ``features`` around each point.

    features: (1, C, h, w); points: (N, 2) (row, col), fractional allowed;
    offsets: (P, 2). Returns (N, C, P). Positions outside the map take the
    nearest border value. At integer positions the result equals indexing.
    """
    _, _, h, w = features.shape
    pos = points[:, None, :].to(features.dtype) + offsets[None].to(features.dtype)  # (N, P, 2)
    # grid_sample wants (x, y) in [-1, 1]; align_corners=True puts -1/+1 on the
    # centres of the first/last cells, so cell index i maps exactly to i.
    gx = pos[..., 1] * (2.0 / max(w - 1, 1)) - 1.0
    gy = pos[..., 0] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)[None]  # (1, N, P, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].permute(1, 0, 2)  # (1, C, N, P) -> (N, C, P)


def step_towards(handle_points: torch.Tensor, target_points: torch.Tensor, beta: float) -> torch.Tensor:
    """GoodDrag's step: ``h + d`` with ``d = unit(g - h) * min(beta, |g - h|)``.

    With ``beta = 1`` and ``|g - h| >= 1`` this is DragDiffusion's unit step.
    A handle already on its target stays where it is.
    """
    delta = target_points - handle_points
    dist = delta.norm(dim=-1, keepdim=True)
    step = delta / dist.clamp_min(1e-8) * dist.clamp_max(beta)
    return handle_points + step


def active_pairs(handle_points: torch.Tensor, target_points: torch.Tensor, stop_distance: float) -> torch.Tensor:
    """Bool (N,): pairs still farther than ``stop_distance`` from their target."""
    return (target_points - handle_points).norm(dim=-1) >= stop_distance


def motion_supervision_loss(
    features: torch.Tensor,
    reference_patches: torch.Tensor,
    handle_points: torch.Tensor,
    target_points: torch.Tensor,
    *,
    radius: int,
    beta: float,
    centered: bool,
    stop_distance: float = 2.0,
) -> torch.Tensor:
    """``sum_i P * mean|ref_i - F[patch(h_i + d_i)]|`` over the pairs not yet done.

    ``reference_patches`` (N, C, P) are detached; P is the number of cells in
    a patch ((2r)^2 or (2r+1)^2). Pairs within ``stop_distance`` contribute 0.
    """
    offsets = patch_offsets(radius, centered, features.device)
    moved = sample_patches(features, step_towards(handle_points, target_points, beta), offsets)
    per_pair = (moved - reference_patches).abs().mean(dim=(1, 2)) * offsets.shape[0]  # (N,)
    active = active_pairs(handle_points, target_points, stop_distance)
    return (per_pair * active.to(per_pair.dtype)).sum()


def gooddrag_motion_loss(
    features: torch.Tensor,
    reference_patches: torch.Tensor,
    handle_points: torch.Tensor,
    target_points: torch.Tensor,
    *,
    r1: int,
    beta: float,
    stop_distance: float = 2.0,
) -> torch.Tensor:
    """GoodDrag's information-preserving loss (paper Eq. 6).

    ``L = sum_i (2 r1)^2 mean|F0_t[patch(h_i^0)] - F(z)[patch(h_i + d_i)]|``.
    ``reference_patches`` (N, C, (2 r1)^2) are the ORIGINAL handles' patches on
    the unedited features at this timestep:
    ``sample_patches(F0_t, handle_points_init, patch_offsets(r1, centered=False))``.
    """
    return motion_supervision_loss(
        features, reference_patches.detach(), handle_points, target_points,
        radius=r1, beta=beta, centered=False, stop_distance=stop_distance,
    )


def dragdiffusion_motion_loss(
    features: torch.Tensor,
    reference_patches: torch.Tensor | None,
    handle_points: torch.Tensor,
    target_points: torch.Tensor,
    *,
    r1: int,
    beta: float = 1.0,
    stop_distance: float = 2.0,
) -> torch.Tensor:
    """DragDiffusion's loss (its Eq. 3): the reference is the CURRENT handle's
    (2 r1 + 1)^2 patch on the features being optimised, detached; step of
    length ``beta`` (1 in DragDiffusion). ``reference_patches`` is ignored; it
    keeps the signature the same as :func:`gooddrag_motion_loss`.
    """
    del reference_patches
    offsets = patch_offsets(r1, centered=True, device=features.device)
    reference = sample_patches(features, handle_points, offsets).detach()
    return motion_supervision_loss(
        features, reference, handle_points, target_points,
        radius=r1, beta=beta, centered=True, stop_distance=stop_distance,
    )


def features_at(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Feature vectors (N, C) of ``features`` (1, C, h, w) at integer (row, col) ``points`` (N, 2)."""
    return features[0][:, points[:, 0].long(), points[:, 1].long()].T


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
    _, _, h, w = features.shape
    offsets = patch_offsets(r2, centered=True, device=features.device).long()  # (P, 2)
    pos = handle_points.long()[:, None, :] + offsets[None]  # (N, P, 2)
    inside = (pos[..., 0] >= 0) & (pos[..., 0] < h) & (pos[..., 1] >= 0) & (pos[..., 1] < w)
    window = features[0][:, pos[..., 0].clamp(0, h - 1), pos[..., 1].clamp(0, w - 1)]  # (C, N, P)
    dist = (window - reference_features.T[:, :, None]).abs().sum(dim=0)  # (N, P)
    dist = torch.where(inside, dist, torch.full_like(dist, float("inf")))
    best = dist.argmin(dim=-1)  # (N,)
    return pos[torch.arange(pos.shape[0], device=pos.device), best].to(handle_points.dtype)


def background_loss(x_prev: torch.Tensor, x_prev_original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum |x_{t-1}(z) - x_{t-1}^orig| * (1 - mask)`` (DragDiffusion Eq. 4).

    x_prev, x_prev_original: (1, 4, h_lat, w_lat); mask: (1, 1, h_lat, w_lat), 1 = editable.
    """
    return ((x_prev - x_prev_original).abs() * (1.0 - mask)).sum()


MOTION_LOSSES = {"gooddrag": gooddrag_motion_loss, "dragdiffusion": dragdiffusion_motion_loss}
