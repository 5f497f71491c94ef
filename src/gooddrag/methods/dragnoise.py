"""DragNoise (Liu et al., CVPR 2024): dragging by optimising the UNet's bottleneck, as its authors'
code does it (haofengl/DragNoise, snapshot 1072731: ``drag_diffusion_update`` in
utils/drag_utils.py, ``run_drag`` in utils/ui_utils.py and drag_bench_evaluation/run_drag_diffusion.py,
the UNet forward and the sampling in drag_pipeline.py). docs/method.md, "DragNoise", lists where we
differ and the parity run.

One drag timestep: the inverted latent's (schedule index 0, level t). The latent z_t is never
changed. What is optimised is the bottleneck h, the mid block's output (block 0 of
``[mid_block, *up_blocks]``), first taken from a pass of z_t without gradient; every pass of the drag
feeds h to the decoder in place of what the mid block computed
(:meth:`~gooddrag.methods.base.DenoisingModel.block_output_override`), so gradients reach h through
the up blocks only (their skip inputs come from the fixed z_t). Per optimiser step, DragDiffusion's
loop (the ``dragdiffusion`` preset's):

1. a forward pass of z_t with h: features F (block ``feature_block`` on the supervision grid) and
   the DDIM step x_{t-1}(h);
2. from the second step on, point tracking on F (``hooks.track``: DragDiffusion's nearest neighbour
   within ``r2`` cells, against the unedited features at the ORIGINAL handles);
3. the stop test: every handle within ``stop_distance`` of its target ends the drag;
4. one Adam step on h of ``hooks.motion_loss`` (DragDiffusion's: unit step, the current handle's
   patch detached, weight (2 r1 + 1)^2) plus ``lam`` x the SUM of |x_{t-1}(h) - x_{t-1}^orig| outside
   the mask, always on (:func:`background_mask` for a run without a mask).

Then the denoising, from the UNEDITED z_t, one branch, with the optimised h* in place of the
bottleneck at every step but the last ``propagation_end_step`` (:func:`substituted`), and no mutual
self-attention (their code registers none).

Frames: handles and targets (N, 2) (row, col) supervision-grid cells, whole cells (tracking returns
cells); features (1, C, h_sup, w_sup); h (1, C_mid, h_mid, w_mid) fp32 (SD1.5: 1280 x 1/8 of the
latent's side); latents (1, c, h_lat, w_lat) fp32. Host reads: one per optimiser step, the stop test
(through ``hooks.host_read``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.clock import PhaseClock
from ..core.ddim import ddim_step
from ..core.motion import active_pairs, background_loss, patch_offsets, sample_patches
from ..core.tracking import features_at
from ..models.features import FeatureHook
from .base import (
    DenoisingModel,
    DragContext,
    DragOutcome,
    DragSource,
    DragStats,
    PreparedInputs,
    StepEvent,
)
from .config import DragConfig

logger = logging.getLogger(__name__)

BOTTLENECK = 0
"""Index of the mid block in ``[mid_block, *up_blocks]``: its output is what DragNoise optimises
(their ``all_intermediate_features[0]``, drag_pipeline.py:173, :337)."""


# ----------------------------------------------------------------------- pure functions
def background_mask(inputs: PreparedInputs, config: DragConfig) -> torch.Tensor:
    """(1, 1, h_lat, w_lat) the mask the background term reads (1 = may change): the given one; with
    no mask given and ``background_without_mask`` (their code: an undrawn mask is all zeros,
    ui_utils.py:242-245) all zeros, so the term holds the whole image; else the pipeline's all-ones
    mask (the term is 0)."""
    if inputs.mask_given or not config.background_without_mask:
        return inputs.mask
    return torch.zeros_like(inputs.mask)


def substituted(k: int, steps: int, end_step: int) -> bool:
    """Whether denoising step ``k`` of ``steps`` (0: the drag timestep's) runs with the optimised
    bottleneck: all but the last ``end_step`` (their ``i < 50 - end_step`` over the full 50-step
    schedule, whose last 35 are denoised, drag_pipeline.py:457-468)."""
    return k < steps - end_step


def reached(handles: torch.Tensor, targets: torch.Tensor, stop_distance: float) -> torch.Tensor:
    """(1,) bool on the device: every (N, 2) handle within ``stop_distance`` cells of its target
    (their ``check_handle_reach_target``, drag_utils.py:34-38)."""
    return (~active_pairs(handles, targets, stop_distance)).all().reshape(1)


# ------------------------------------------------------------------------------- the drag
@dataclass
class DragNoiseState:
    """The drag's references and where it stands."""

    handles: torch.Tensor
    """(N, 2) current handles, (row, col) cells."""
    h: torch.Tensor
    """(1, C_mid, h_mid, w_mid) fp32 leaf: the bottleneck being optimised."""
    vectors: torch.Tensor
    """(N, C) unedited features at the ORIGINAL handles: the tracking reference."""
    patches: torch.Tensor
    """(N, C, (2 r1 + 1)^2) unedited patches at the original handles (read only by GoodDrag's loss)."""
    x_prev_orig: torch.Tensor
    """(1, c, h_lat, w_lat) DDIM step of the unedited z_t: the background term's reference."""
    mask: torch.Tensor
    """(1, 1, h_lat, w_lat) what the background term reads (:func:`background_mask`)."""
    stats: DragStats = field(default_factory=DragStats)


def start_state(model: DenoisingModel, z: torch.Tensor, handles: torch.Tensor, ctx: DragContext,
                hook: FeatureHook) -> DragNoiseState:
    """One pass of the unedited (1, c, h, w) z_t without gradient (drag_utils.py:76-79): the
    bottleneck h0 (the start of h), the tracking and motion references at the handles, x_{t-1}^orig."""
    config, schedule = ctx.config, ctx.schedule
    with torch.no_grad(), model.feature_hook(BOTTLENECK) as bottleneck:
        eps = model.model_output(z, schedule.timesteps[0], ctx.cond)
        f0 = hook.features(ctx.inputs.sup_size)  # (1, C, h_sup, w_sup)
        h0 = bottleneck.output.float().clone()  # (1, C_mid, h_mid, w_mid), the mid block's own
        x_prev = ddim_step(z, eps, schedule.alphas[0], schedule.alphas_prev[0], model.prediction_type)
    return DragNoiseState(
        handles=handles.clone(), h=h0.requires_grad_(True), vectors=features_at(f0, handles),
        patches=sample_patches(f0, handles, patch_offsets(config.r1, z.device)), x_prev_orig=x_prev,
        mask=background_mask(ctx.inputs, config),
    )


def forward(model: DenoisingModel, z: torch.Tensor, ctx: DragContext,
            hook: FeatureHook) -> tuple[torch.Tensor, torch.Tensor]:
    """A pass of z_t (the override of the bottleneck is the caller's): the (1, C, h_sup, w_sup)
    features, with gradient to h, and x_{t-1}(h) (drag_utils.py:110-112)."""
    schedule = ctx.schedule
    eps = model.model_output(z, schedule.timesteps[0], ctx.cond)
    x_prev = ddim_step(z, eps, schedule.alphas[0], schedule.alphas_prev[0], model.prediction_type)
    return hook.features(ctx.inputs.sup_size), x_prev


def track(features: torch.Tensor, state: DragNoiseState, ctx: DragContext) -> None:
    """A tracking on the step's fresh features (drag_utils.py:117-119) and its StepEvent."""
    config = ctx.config
    state.handles = ctx.hooks.track(features.detach(), state.vectors, state.handles, config)
    state.stats.tracking_steps += 1
    if ctx.callback is not None:
        ctx.callback(StepEvent(
            "drag", state.stats.drag_rounds, config.track_per_step, timestep=0, tracking="round",
            handle_points=ctx.to_input_points(state.handles) if ctx.to_input_points else None,
        ))


def optimiser_step(features: torch.Tensor, x_prev: torch.Tensor, state: DragNoiseState, ctx: DragContext,
                   optimizer: torch.optim.Optimizer) -> None:
    """One Adam step on h: motion term + ``lam`` x the summed background term (drag_utils.py:126-154)."""
    config = ctx.config
    motion = ctx.hooks.motion_loss(features, state.patches, state.handles, ctx.inputs.target_points, config)
    loss = motion + config.lam * background_loss(x_prev, state.x_prev_orig, state.mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    state.stats.drag_steps += 1
    state.stats.drag_rounds += 1  # one step per tracking, as DragDiffusion's


def drag(model: DenoisingModel, source: DragSource, ctx: DragContext, hook: FeatureHook) -> DragNoiseState:
    """Their ``drag_diffusion_update`` loop (drag_utils.py:107-154) from ``source``: at most
    ``track_per_step`` Adam steps on h; returns the final state (h detached: the optimised h*)."""
    config = ctx.config
    z = source.latents.detach()
    state = start_state(model, z, source.handles, ctx, hook)
    optimizer = torch.optim.Adam([state.h], lr=config.lr,
                                 fused=True if model.fused_adam and state.h.is_cuda else None)
    state.stats.stop_reason = "budget"
    with model.block_output_override(BOTTLENECK, state.h), \
            tqdm(total=config.track_per_step, desc="drag", disable=not ctx.progress, leave=False) as bar:
        for step in range(config.track_per_step):
            features, x_prev = forward(model, z, ctx, hook)
            if step > 0:
                track(features, state, ctx)
            done = reached(state.handles, ctx.inputs.target_points, config.stop_distance)
            if ctx.hooks.host_read(done)[0]:  # host read: the stop decision
                state.stats.stop_reason = "reached"
                break
            optimiser_step(features, x_prev, state, ctx, optimizer)
            bar.update(1)
    stats = state.stats
    stats.drag_timesteps = int(stats.drag_steps > 0)
    stats.drag_steps_per_timestep = [stats.drag_steps]
    state.h = state.h.detach()
    logger.info("DragNoise: %d Adam steps on the bottleneck, %s", stats.drag_steps, stats.stop_reason)
    return state


# ---------------------------------------------------------------------------------- denoising
def denoise_step(model: DenoisingModel, z: torch.Tensor, k: int, ctx: DragContext,
                 trajectory: list[torch.Tensor]) -> torch.Tensor:
    """One DDIM step of the (1, c, h, w) edited branch at schedule index ``k`` (whatever bottleneck the
    caller has put in place); its predicted clean latent goes to the trajectory (the drag timestep
    only, when kept) and to the step callback."""
    schedule, pt = ctx.schedule, model.prediction_type
    a, a_prev = schedule.alphas[k], schedule.alphas_prev[k]
    with torch.no_grad():
        eps = model.model_output(z, schedule.timesteps[k], ctx.cond)
        keep = ctx.keep_trajectory and k < ctx.config.drag_end_step
        if keep or ctx.callback is not None:
            x0 = ddim_step(z, eps, a, torch.ones((), device=model.device), pt)  # predicted clean latent
            if keep:
                trajectory.append(x0)
            if ctx.callback is not None:
                ctx.callback(StepEvent("denoise", k + 1, len(schedule), latents=x0, timestep=k))
        return ddim_step(z, eps, a, a_prev, pt)


def denoise(model: DenoisingModel, z: torch.Tensor, h: torch.Tensor,
            ctx: DragContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every denoising step from the drag timestep on, from the unedited (1, c, h, w) z_t, the
    optimised (1, C_mid, h_mid, w_mid) h in place of the bottleneck where :func:`substituted` says
    (drag_pipeline.py:440-480; their batch of two identical rows is one branch here)."""
    steps = len(ctx.schedule)
    trajectory: list[torch.Tensor] = []
    with tqdm(total=steps, desc="denoise", disable=not ctx.progress, leave=False) as bar:
        for k in range(steps):
            on = substituted(k, steps, ctx.config.propagation_end_step)
            with model.block_output_override(BOTTLENECK, h) if on else contextlib.nullcontext():
                z = denoise_step(model, z, k, ctx, trajectory)
            bar.update(1)
    return z, trajectory


def run(model: DenoisingModel, source: DragSource, ctx: DragContext) -> DragOutcome:
    """DragNoise from ``source``: the drag of the bottleneck at the first timestep, then the
    denoising of the unedited latent with it. The outcome's handles are the last tracked ones."""
    if not ctx.inputs.mask_given and ctx.config.background_without_mask:
        logger.info("no mask: DragNoise's background term holds the whole image, as its authors' code "
                    "does (background_without_mask)")
    clock = PhaseClock(model.device)
    mark = clock.now()
    with model.feature_hook(ctx.config.feature_block) as hook, ctx.hooks.phase("drag"):
        state = drag(model, source, ctx, hook)
    mark = clock.add("drag", mark)
    z, trajectory = denoise(model, source.latents, state.h, ctx)
    clock.add("denoise", mark)
    return DragOutcome(latents=z, handles=state.handles, stats=state.stats, trajectory=trajectory,
                       timings={"drag": 0.0, "denoise": 0.0} | clock.seconds())


__all__ = [
    "BOTTLENECK", "background_mask", "substituted", "reached", "DragNoiseState", "start_state", "forward",
    "track", "optimiser_step", "drag", "denoise_step", "denoise", "run",
]
