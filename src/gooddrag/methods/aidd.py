"""AIDD: Alternating Drag and Denoising (GoodDrag Sec. 3.1; docs/method.md, "AIDD"), as small
functions over a state dataclass. GoodDrag, DragDiffusion (the case ``drag_end_step = 1``) and
GoodDrag+ all run :func:`drag_and_denoise`; their configs say how.

At each of the first ``drag_end_step`` timesteps: drag (rounds of optimiser steps on the latent and
point tracking), then one DDIM step; then denoise to t = 0. The source (unedited) branch is denoised
in the same batch and feeds mutual self-attention, which is switched on at the first denoising step
without drag work (or from the first step, with ``mutual_attention_while_dragging``).

Frames: handles/targets (N, 2) (row, col) supervision cells; latents (1, c, h, w) fp32.
Host reads: one per tracking (the stop decision), none per optimiser step (unless
``drag_loss_threshold`` > 0).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core import warp
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
    StepEvent,
)
from .config import DragConfig
from .denoise import denoise_step


@dataclass
class TimestepReference:
    """The unedited trajectory at one drag timestep (computed once, no grad)."""

    vectors: torch.Tensor
    """(N, C) features at the ORIGINAL handles: the tracking reference."""
    patches: torch.Tensor
    """(N, C, (2 r1 + 1)^2) patches around the ORIGINAL handles: GoodDrag's motion reference."""
    x_prev: torch.Tensor
    """(1, c, h, w) DDIM step of the unedited latent: the background term's reference."""


@dataclass
class AIDDState:
    """What carries over between drag timesteps."""

    handles: torch.Tensor
    """(N, 2) current handles, (row, col) supervision cells."""
    no_change: int = 0
    """Round-closing trackings in a row that moved no handle (carries over, as in the authors' code)."""
    stopped: bool = False
    """A stop rule ended the drag phase: later timesteps only denoise."""
    reached: bool | None = None
    """Whether every handle is done, as of the last tracking (None: not tracked yet)."""
    stats: DragStats = field(default_factory=DragStats)


@dataclass
class RoundCounter:
    """Where one drag timestep stands."""

    steps: int = 0
    """Optimiser steps at this timestep."""
    rounds: int = 0
    """Tracking rounds closed at this timestep."""
    in_round: int = 0
    """Optimiser steps in the open round."""
    pending: str | None = None
    """A tracking due on the next forward pass: ``"start"`` or ``"round"`` (fresh features)."""
    check: bool = True
    """The stop rules must be tested before the next optimiser step."""


def reference_trajectory(model: DenoisingModel, latents: torch.Tensor, handles: torch.Tensor,
                         ctx: DragContext, hook: FeatureHook) -> list[TimestepReference]:
    """The unedited trajectory through the drag timesteps (the authors' ``get_original_features``):
    per timestep the features at the ORIGINAL handles (tracking reference vectors, GoodDrag's
    reference patches) and the DDIM step x_{t-1}^orig (the background term's reference)."""
    config, schedule = ctx.config, ctx.schedule
    offsets = patch_offsets(config.r1, model.device)  # ((2 r1 + 1)^2, 2)
    refs: list[TimestepReference] = []
    source = latents
    with torch.no_grad():
        for k in range(config.drag_end_step):
            eps = model.model_output(source, schedule.timesteps[k], ctx.cond)
            f0 = hook.features(ctx.inputs.sup_size)  # (1, C, h_sup, w_sup)
            source = ddim_step(source, eps, schedule.alphas[k], schedule.alphas_prev[k], model.prediction_type)
            refs.append(TimestepReference(
                vectors=features_at(f0, handles),  # (N, C)
                patches=sample_patches(f0, handles, offsets),  # (N, C, (2 r1 + 1)^2)
                x_prev=source,  # (1, c, h, w)
            ))
    return refs


def no_change_exhausted(state: AIDDState, config: DragConfig) -> bool:
    """The no-change count (round-closing trackings that moved no handle) reached its limit."""
    return bool(config.max_track_no_change) and state.no_change >= config.max_track_no_change


def track(features: torch.Tensor, ref: TimestepReference, state: AIDDState, ctx: DragContext,
          k: int, kind: str) -> None:
    """One point tracking (``kind`` ``"start"`` or ``"round"``; only a round's moves the no-change
    count); its one host read decides the stop rules."""
    config, stats = ctx.config, state.stats
    new = ctx.hooks.track(features.detach(), ref.vectors, state.handles, config)
    moved = (new.round() != state.handles.round()).any()  # a whole cell (sub-cell tracking moves by less)
    reached = (~active_pairs(new, ctx.inputs.target_points, config.stop_distance)).all()
    state.handles = new
    stats.tracking_steps += 1
    reached_host, moved_host = ctx.hooks.host_read(torch.stack([reached, moved]))  # the tracking's one host read
    state.reached = bool(reached_host)
    if kind == "round":
        state.no_change = 0 if moved_host else state.no_change + 1
    if ctx.callback is not None:
        ctx.callback(StepEvent(
            "drag", stats.drag_rounds, config.drag_end_step * config.track_per_step,
            handle_points=ctx.to_input_points(state.handles), timestep=k, tracking=kind,
        ))


def should_stop(state: AIDDState, ctx: DragContext) -> bool:
    """The stop rules (every pair within ``stop_distance``; no-change count exhausted); a stop ends
    the whole drag phase."""
    config = ctx.config
    if state.reached is None:  # handles not tracked yet: the user's (DragDiffusion's first step)
        state.reached = bool((~active_pairs(state.handles, ctx.inputs.target_points, config.stop_distance)).all())
    if state.reached:
        state.stats.stop_reason = "reached"
    elif no_change_exhausted(state, config):
        state.stats.stop_reason = "no_change"
    else:
        return False
    state.stopped = True
    return True


def optimiser_step(model: DenoisingModel, z: torch.Tensor, eps: torch.Tensor, features: torch.Tensor, k: int,
                   ref: TimestepReference, ctx: DragContext, state: AIDDState,
                   optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One Adam step on z_t of motion supervision + ``lam`` x the background term (GoodDrag Eq. 8 /
    DragDiffusion Eq. 4, docs/method.md "Motion supervision"); returns the motion term (detached)."""
    config, schedule = ctx.config, ctx.schedule
    x_prev = ddim_step(z, eps, schedule.alphas[k], schedule.alphas_prev[k], model.prediction_type)
    drag_loss = ctx.hooks.motion_loss(features, ref.patches, state.handles, ctx.inputs.target_points, config)
    loss = drag_loss + config.lam * background_loss(x_prev, ref.x_prev, ctx.inputs.mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return drag_loss.detach()


def close_round(features: torch.Tensor, ref: TimestepReference, ctx: DragContext, state: AIDDState,
                counter: RoundCounter, k: int, bar) -> None:
    """End a tracking round: count it and track now (on this round's last forward pass) or, with
    ``track_on_fresh_features`` (DragDiffusion), on the next forward pass."""
    counter.rounds += 1
    counter.in_round = 0
    state.stats.drag_rounds += 1
    bar.update(1)
    if ctx.config.track_on_fresh_features:
        counter.pending = "round"
    else:
        track(features, ref, state, ctx, k, "round")
        counter.check = True


def drag_at_timestep(model: DenoisingModel, z: torch.Tensor, k: int, ref: TimestepReference,
                     ctx: DragContext, state: AIDDState, hook: FeatureHook, bar) -> torch.Tensor:
    """One AIDD drag block at timestep index ``k``, in the order of the authors' ``gooddrag_step``
    (GoodDrag pipeline.py): a fresh Adam on z_t; with ``track_at_timestep_start``, one tracking on
    the first forward pass (not moving the no-change count); the stop rules before every optimiser
    step; each optimiser step its own forward pass; after ``max_drag_per_track`` steps (or a step
    whose motion term is <= ``drag_loss_threshold x (2 r1)^2``) the round ends (:func:`close_round`).
    No tracking follows the last round of a timestep in the fresh mode."""
    config = ctx.config
    z = z.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=config.lr, fused=True if model.fused_adam and z.is_cuda else None)
    threshold = config.drag_loss_threshold * (2 * config.r1) ** 2
    counter = RoundCounter(pending="start" if config.track_at_timestep_start else None)
    while counter.rounds < config.track_per_step:
        if counter.check and counter.pending is None:
            if should_stop(state, ctx):
                break
            counter.check = False
        eps = model.model_output(z, ctx.schedule.timesteps[k], ctx.cond)
        features = hook.features(ctx.inputs.sup_size)  # (1, C, h_sup, w_sup)
        if counter.pending is not None:
            track(features, ref, state, ctx, k, counter.pending)
            counter.pending = None
            if should_stop(state, ctx):
                break
            counter.check = False
        drag_loss = optimiser_step(model, z, eps, features, k, ref, ctx, state, optimizer)
        counter.steps += 1
        state.stats.drag_steps += 1
        counter.in_round += 1
        # With threshold 0 the test can only pass when every pair is done, which the
        # reached stop has already caught: no host read then.
        if counter.in_round == config.max_drag_per_track or (
                threshold > 0 and ctx.hooks.host_read(drag_loss) <= threshold):
            close_round(features, ref, ctx, state, counter, k, bar)
    if counter.steps:
        state.stats.drag_timesteps += 1
    state.stats.drag_steps_per_timestep.append(counter.steps)
    return z.detach()


def drag_phase_over(k: int, state: AIDDState, config: DragConfig) -> bool:
    """The authors' outer test (GoodDrag pipeline.py ``good_drag``): drag while within
    ``drag_end_step``, not stopped, and the no-change count (which carries over between
    timesteps) is not exhausted; False once a drag phase has ended."""
    if k < config.drag_end_step and not state.stopped and no_change_exhausted(state, config):
        state.stopped, state.stats.stop_reason = True, "no_change"
    return not (k < config.drag_end_step and not state.stopped)


def denoise_with_drag(model: DenoisingModel, src: torch.Tensor, z: torch.Tensor, refs: list[TimestepReference],
                      ctx: DragContext, state: AIDDState, hook: FeatureHook, clock: PhaseClock, mark):
    """Every denoising step, with drag work at the first ``drag_end_step``; returns (clean edited
    latent, trajectory)."""
    config = ctx.config
    trajectory: list[torch.Tensor] = []
    mutual_from: int | None = None  # step at which mutual self-attention would start
    bar_drag = tqdm(total=config.drag_end_step * config.track_per_step, desc="drag", disable=not ctx.progress,
                    leave=False)
    bar_denoise = tqdm(total=len(ctx.schedule), desc="denoise", disable=not ctx.progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar_drag.close)
        stack.callback(bar_denoise.close)
        for k in range(len(ctx.schedule)):
            dragging = not drag_phase_over(k, state, config)
            if dragging:
                with ctx.hooks.phase("drag"):
                    z = drag_at_timestep(model, z, k, refs[k], ctx, state, hook, bar_drag)
                mark = clock.add("drag", mark)
            if mutual_from is None and (config.mutual_attention_while_dragging or not dragging):
                mutual_from = k
            if mutual_from is not None and k == mutual_from + config.mutual_attention_start_step:
                # From here on the edited half of each batch attends to the source half.
                stack.enter_context(model.mutual_attention(config.mutual_attention_start_layer))
            src, z = denoise_step(model, src, z, k, ctx, trajectory)
            bar_denoise.update(1)
            mark = clock.add("denoise", mark)
    return z, trajectory


def drag_and_denoise(model: DenoisingModel, source: DragSource, ctx: DragContext) -> DragOutcome:
    """AIDD from ``source`` (the inverted input, or GoodDrag+'s inverted warped input: the
    reference features, the background term's reference, the source branch and the drag's start
    all come from it). GoodDrag+'s latent warp (``config.latent_warp``) moves the masked region by
    whole latent cells before the drag."""
    config, inputs = ctx.config, ctx.inputs
    clock = PhaseClock(model.device)
    mark = clock.now()
    with model.feature_hook(config.feature_block) as hook:
        with ctx.hooks.phase("drag"):
            refs = reference_trajectory(model, source.latents, source.handles, ctx, hook)
        mark = clock.add("drag", mark)  # the reference trajectory is drag work
        z, start_handles = source.latents, source.handles
        if config.latent_warp:
            z, start_handles = warp.warp_for_drag(source.latents, inputs.handle_points, inputs.target_points,
                                                  inputs.mask, inputs.sup_size, config)
        state = AIDDState(handles=start_handles.clone())
        z, trajectory = denoise_with_drag(model, source.latents, z, refs, ctx, state, hook, clock, mark)
    timings = {"drag": 0.0, "denoise": 0.0} | clock.seconds()
    return DragOutcome(latents=z, handles=state.handles, stats=state.stats, trajectory=trajectory, timings=timings)


__all__ = [
    "TimestepReference", "AIDDState", "RoundCounter", "reference_trajectory", "no_change_exhausted", "track",
    "should_stop", "optimiser_step", "close_round", "drag_at_timestep", "drag_phase_over",
    "denoise_with_drag", "drag_and_denoise",
]
