"""Motion supervision and point tracking as pure functions on tensors.

Frame: every point here is ``(row, col)`` in *supervision-grid cells*, a float
tensor of shape ``(N, 2)``; feature maps are ``(1, C, h, w)`` on that grid.
Conversion from user (x, y) image pixels happens in :mod:`gooddrag.core.geometry`.

References: DragDiffusion (Shi et al., CVPR 2024), Eq. 3-5; GoodDrag (Zhang et
al., ICLR 2025), Sec. 3.2 "information-preserving motion supervision".
"""

from __future__ import annotations

import torch


def patch_offsets(radius: int, device=None) -> torch.Tensor:
    """Cell offsets ``(P, 2)`` of the centred square patch, rows/cols ``-r..r``
    inclusive, row-major: ``P = (2r+1)^2`` (81 cells for r = 4).

    Both methods' patches have this shape (GoodDrag: pipeline.py
    ``cal_motion_supervision_loss``, slice ``[int(h) - r1, int(h) + r1 + 1)``;
    DragDiffusion: drag_utils.py ``drag_diffusion_update``); they differ in
    the weight (:func:`gooddrag_motion_loss`, :func:`dragdiffusion_motion_loss`).
    """
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


def sample_patches(features: torch.Tensor, points: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a patch of ``features`` around each point.

    features: (1, C, h, w); points: (N, 2) (row, col), fractional allowed;
    offsets: (P, 2). Returns (N, C, P). Positions outside the map take the
    nearest border value. At integer positions the result equals indexing
    exactly (the weights are 1 and 0).

    Written out (four corner gathers) rather than with ``grid_sample``:
    grid_sample's coordinate normalisation moves integer positions by ~1e-7,
    so its samples differ from the authors' integer slices in the last bits.
    """
    _, _, h, w = features.shape
    pos = points[:, None, :].to(features.dtype) + offsets[None].to(features.dtype)  # (N, P, 2)
    top_left = pos.floor()
    frac = pos - top_left  # (N, P, 2) in [0, 1)
    r0, c0 = top_left[..., 0].long(), top_left[..., 1].long()
    fr, fc = frac[..., 0], frac[..., 1]
    fmap = features[0]  # (C, h, w)

    def at(r, c):  # (C, N, P), border cells repeated outside the map
        return fmap[:, r.clamp(0, h - 1), c.clamp(0, w - 1)]

    out = (
        at(r0, c0) * ((1 - fr) * (1 - fc))
        + at(r0 + 1, c0) * (fr * (1 - fc))
        + at(r0, c0 + 1) * ((1 - fr) * fc)
        + at(r0 + 1, c0 + 1) * (fr * fc)
    )
    return out.permute(1, 0, 2)  # (C, N, P) -> (N, C, P)


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
    weight: float,
    stop_distance: float = 2.0,
) -> torch.Tensor:
    """``sum_i weight * mean|ref_i - F[patch(h_i + d_i)]|`` over the pairs not yet done.

    features: (1, C, h, w); reference_patches: (N, C, (2r+1)^2), detached;
    handle_points / target_points: (N, 2) (row, col) cells. The moved patch is
    the centred patch around ``h_i + d_i`` (:func:`step_towards`), sampled
    bilinearly. Pairs within ``stop_distance`` of their target contribute 0.
    Returns a 0-dim tensor (0 when every pair is done).
    """
    offsets = patch_offsets(radius, features.device)
    moved = sample_patches(features, step_towards(handle_points, target_points, beta), offsets)  # (N, C, P)
    per_pair = (moved - reference_patches).abs().mean(dim=(1, 2)) * weight  # (N,)
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
    """GoodDrag's information-preserving loss (paper Eq. 6, the authors' pipeline.py
    ``cal_motion_supervision_loss``):

    ``L = sum_i (2 r1)^2 mean|F0_t[patch(h_i^0)] - F(z)[patch(h_i + d_i)]|``

    over the centred (2 r1 + 1)^2 patch; ``(2 r1)^2`` is only a weight (64 for
    r1 = 4, over 81 cells). ``reference_patches`` (N, C, (2 r1 + 1)^2) are the
    ORIGINAL handles' patches on the unedited features at this timestep:
    ``sample_patches(F0_t, handle_points_init, patch_offsets(r1))`` (integer
    positions: plain indexing).
    """
    return motion_supervision_loss(
        features, reference_patches.detach(), handle_points, target_points,
        radius=r1, beta=beta, weight=float((2 * r1) ** 2), stop_distance=stop_distance,
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
    """DragDiffusion's loss (its Eq. 3; drag_utils.py ``drag_diffusion_update``):
    the reference is the CURRENT handle's (2 r1 + 1)^2 patch on the features
    being optimised, detached, weight (2 r1 + 1)^2; step of length ``beta``
    (1 in DragDiffusion). ``reference_patches`` is ignored; it keeps the
    signature the same as :func:`gooddrag_motion_loss`.
    """
    del reference_patches
    reference = sample_patches(features, handle_points, patch_offsets(r1, features.device)).detach()
    return motion_supervision_loss(
        features, reference, handle_points, target_points,
        radius=r1, beta=beta, weight=float((2 * r1 + 1) ** 2), stop_distance=stop_distance,
    )


def background_loss(x_prev: torch.Tensor, x_prev_original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum |x_{t-1}(z) - x_{t-1}^orig| * (1 - mask)`` (DragDiffusion Eq. 4).

    x_prev, x_prev_original: (1, 4, h_lat, w_lat); mask: (1, 1, h_lat, w_lat), 1 = editable.
    """
    return ((x_prev - x_prev_original).abs() * (1.0 - mask)).sum()


MOTION_LOSSES = {"gooddrag": gooddrag_motion_loss, "dragdiffusion": dragdiffusion_motion_loss}
