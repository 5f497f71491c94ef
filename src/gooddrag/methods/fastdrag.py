"""FastDrag (Zhao et al., NeurIPS 2024): one warp of the inverted latent, then denoising with the
inversion's self-attention keys and values, as its authors' code does it for "continuous drag"
(XuanjiaZ/FastDrag, snapshot def3c4e: ``run_drag`` in utils/ui_utils.py:216-497, the warp in
utils/continuous_drag.py:125-215, the K/V copy in utils/unet_drag/attention_processor.py:1261-1278).
docs/method.md, "FastDrag", lists where we differ and the parity run.

1. Inversion (the pipeline's): :func:`inversion_context` records the input of every self-attention
   layer from the decoder's first on (their ``updown == 'up'`` layers), per timestep
   (:class:`gooddrag.models.attention.SelfAttentionCache`); it reaches :func:`run` as ``source.extras``.
2. The warp (:func:`gooddrag.core.fastdrag_warp.drag_warp`) of z_t inside the mask, the mask resized
   bilinearly from the supervision grid to the latent; it is sequential (a cell's place depends on the
   cells before it, the fill reads cells it filled), so it runs on a CPU copy of the latent.
3. DDIM steps of the warped latent alone (their batch holds it twice, ui_utils.py:493; both rows are the
   same), the recorded keys and values replayed at each step's timestep; no mutual self-attention.

No optimisation, no feature hook, no tracking: the outcome's handles are the targets, its stats count
no drag step. Frames: handles and targets (N, 2) float (row, col) supervision cells; latents
(1, c, h, w) fp32.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from tqdm.auto import tqdm

from ..core import fastdrag_warp
from ..core.clock import PhaseClock
from ..core.ddim import ddim_step
from ..errors import GoodDragError, InputsCannotWorkError
from .base import DenoisingModel, DragContext, DragOutcome, DragSource, DragStats, PreparedInputs, StepEvent
from .config import DragConfig

logger = logging.getLogger(__name__)


def grid_factor(inputs: PreparedInputs) -> float:
    """Supervision cells per latent cell (their code's fixed 4: ui_utils.py:342, continuous_drag.py:141-142)."""
    return inputs.sup_size[0] / inputs.latent_size[0]


def warp_mask(inputs: PreparedInputs) -> torch.Tensor:
    """(1, 1, h, w) CPU float: the supervision-grid mask resized bilinearly to the latent (ui_utils.py:342)."""
    return fastdrag_warp.latent_mask(inputs.sup_mask.cpu(), inputs.latent_size)


NO_MASK = ("FastDrag warps the latent inside the mask: paint a mask over the region to move (without one, or "
           "with everything editable, the warp has no region)")
"""Why FastDrag refuses a run without a mask (``DragMethod.mask_required``)."""


def check_inputs(inputs: PreparedInputs, config: DragConfig) -> None:
    """FastDrag's refusals, before any work: the warp acts inside the mask, so a mask is required and
    must leave some of the image unchanged; and a handle may not make the mask's first cell placeless
    (where the authors' code crashes, :func:`gooddrag.core.fastdrag_warp.moved_cells`)."""
    if inputs.sup_mask is None or bool(inputs.sup_mask.all()):
        raise InputsCannotWorkError(NO_MASK)
    mask = warp_mask(inputs)
    handles, targets = inputs.handle_points.float().cpu(), inputs.target_points.float().cpu()
    if not fastdrag_warp.first_cell_has_place(mask, handles, targets, grid_factor(inputs)):
        raise InputsCannotWorkError(
            "FastDrag's warp has no place for the mask's first cell (a handle exactly on a latent cell, or "
            "outside the circle around the mask): move the handle by a pixel or widen the mask")


def inversion_context(model: DenoisingModel, config: DragConfig) -> contextlib.AbstractContextManager:
    """Around the pipeline's inversion: record the self-attention inputs to replay (``kv_copy``), else nothing."""
    if not config.kv_copy:
        return contextlib.nullcontext(None)
    return model.self_attention_cache(config.kv_start_layer).record()


def warp(source: DragSource, ctx: DragContext) -> torch.Tensor:
    """The warped (1, c, h, w) latent, on the source's device (computed on a CPU copy)."""
    inputs, config = ctx.inputs, ctx.config
    generator = torch.Generator().manual_seed(config.seed)  # the ``random`` fill only
    warped = fastdrag_warp.drag_warp(
        source.latents.detach().cpu(), source.handles.float().cpu(), inputs.target_points.float().cpu(),
        warp_mask(inputs), fill=config.fastdrag_fill, factor=grid_factor(inputs), generator=generator)
    return warped.to(source.latents.device)


def denoise(model: DenoisingModel, z: torch.Tensor, cache, ctx: DragContext) -> tuple[torch.Tensor, list]:
    """Every DDIM step from the warp's timestep on, one branch, ``cache`` replayed when given; the
    predicted clean latent of the first step (the warp's timestep) goes to the trajectory when asked for."""
    schedule, pt = ctx.schedule, model.prediction_type
    trajectory: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack, torch.no_grad():
        if cache is not None:
            stack.enter_context(cache.replay())
        for k in tqdm(range(len(schedule)), desc="denoise", disable=not ctx.progress, leave=False):
            a, a_prev = schedule.alphas[k], schedule.alphas_prev[k]
            eps = model.model_output(z, schedule.timesteps[k], ctx.cond)
            if (ctx.keep_trajectory and k < ctx.config.drag_end_step) or ctx.callback is not None:
                x0 = ddim_step(z, eps, a, torch.ones((), device=z.device), pt)
                if ctx.keep_trajectory and k < ctx.config.drag_end_step:
                    trajectory.append(x0)
                if ctx.callback is not None:
                    ctx.callback(StepEvent("denoise", k + 1, len(schedule), latents=x0, timestep=k))
            z = ddim_step(z, eps, a, a_prev, pt)
    return z, trajectory


def run(model: DenoisingModel, source: DragSource, ctx: DragContext) -> DragOutcome:
    """FastDrag from ``source``: the warp at the first timestep, then the denoising with the K/V replay."""
    if ctx.config.kv_copy and source.extras is None:
        raise GoodDragError("FastDrag's K/V copy needs the inversion's recording (DragSource.extras): run it "
                            "through DragPipeline, or set kv_copy=False")
    clock = PhaseClock(model.device)
    mark = clock.now()
    with ctx.hooks.phase("drag"):
        z = warp(source, ctx)
    mark = clock.add("drag", mark)
    z, trajectory = denoise(model, z, source.extras if ctx.config.kv_copy else None, ctx)
    clock.add("denoise", mark)
    stats = DragStats(drag_timesteps=0, drag_steps=0, stop_reason="reached", drag_steps_per_timestep=[0])
    logger.info("FastDrag: warped %d pairs in one step, %d DDIM steps%s", len(source.handles), len(ctx.schedule),
                " with the inversion's keys and values" if ctx.config.kv_copy else "")
    return DragOutcome(latents=z, handles=ctx.inputs.target_points.float(), stats=stats, trajectory=trajectory,
                       timings={"drag": 0.0, "denoise": 0.0} | clock.seconds())


__all__ = ["NO_MASK", "grid_factor", "warp_mask", "check_inputs", "inversion_context", "warp", "denoise", "run"]
