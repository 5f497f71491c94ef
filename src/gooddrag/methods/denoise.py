"""What the drag methods share after their drag: DDIM steps of the batch [source, edited].

The source (unedited) branch is denoised beside the edit in one batch, so that mutual
self-attention (switched on by each method when its authors' code does) can let the edit's
queries attend to the source's keys and values.
"""

from __future__ import annotations

import torch

from ..core.ddim import ddim_step
from .base import DenoisingModel, DragContext, StepEvent


def denoise_step(model: DenoisingModel, src: torch.Tensor, z: torch.Tensor, k: int, ctx: DragContext,
                 trajectory: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step at schedule index ``k`` of both branches in one batch ([source, edited], each
    (1, c, h, w)); the edit's predicted clean latent goes to ``trajectory`` (drag timesteps only,
    when the context keeps one) and to the step callback."""
    schedule, pt = ctx.schedule, model.prediction_type
    a, a_prev = schedule.alphas[k], schedule.alphas_prev[k]
    with torch.no_grad():
        both = torch.cat([src, z])  # (2, c, h, w): [source, edited]
        eps = model.model_output(both, schedule.timesteps[k], ctx.cond)
        src, z = ddim_step(both, eps, a, a_prev, pt).chunk(2)
        keep = ctx.keep_trajectory and k < ctx.config.drag_end_step
        if keep or ctx.callback is not None:
            one = torch.ones((), device=model.device)  # alpha_prod of a clean latent
            x0 = ddim_step(both[1:], eps[1:], a, one, pt)  # predicted clean latent of the edit
            if keep:
                trajectory.append(x0)
            if ctx.callback is not None:
                ctx.callback(StepEvent("denoise", k + 1, len(schedule), latents=x0, timestep=k))
    return src, z


__all__ = ["denoise_step"]
