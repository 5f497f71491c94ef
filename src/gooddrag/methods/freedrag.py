"""FreeDrag (Ling et al., CVPR 2024): dragging by adaptive templates and a line search, as its
authors' code does it (LPengYang/FreeDrag, folder ``FreeDrag--diffusion--version``, snapshot a35d988:
``freedrag_update`` in utils/freedrag_utils.py, ``run_drag`` in utils/ui_utils.py). docs/method.md,
"FreeDrag", lists where we differ and the parity run.

One drag timestep: the inverted latent's (schedule index 0). Every pair has a template, the features
of a (2 r + 1)^2 window, first taken around its handle on the unedited latent's features. Then rounds,
until every pair is done or the budget of Adam steps is spent:

1. the line search (:func:`line_search`) moves each pair's point along its segment to the target;
2. up to ``steps_per_search`` Adam steps on z_t pull the window at each point towards its template
   (:func:`pair_losses`, summed over pairs, plus ``lam`` x :func:`background_mean`); they end early
   once every pair's loss, measured before the step, is below 0.5 ``l_expected``;
3. one forward pass without gradient gives each pair's loss at its point (``loss_end``), the done
   test (:func:`pairs_done`), the template update (:func:`update_templates`) and the features the
   next line search reads.

Then both branches ([source, edited]) are denoised, mutual self-attention on as in DragDiffusion.

Frames: points and targets are (N, 2) float (row, col) supervision-grid cells, never rounded; feature
maps (1, C, h, w) on that grid; windows and templates (N, C, P), P = (2 r + 1)^2 cells in the
row-major order of :func:`gooddrag.core.motion.patch_offsets`; latents (1, c, h_lat, w_lat) fp32.
Host reads: one per Adam step (the early end of a search's steps, a decision of the algorithm) and
one per round (whether every pair is done). The line search and the template update stay on the
device: every branch is computed and the right one picked with ``torch.where``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.clock import PhaseClock
from ..core.ddim import ddim_step
from ..core.motion import patch_offsets, sample_patches
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

logger = logging.getLogger(__name__)

MATCHED = 0.5
"""A pair's loss below ``MATCHED x l_expected`` counts as matched (freedrag_utils.py:156)."""


# ----------------------------------------------------------------------- pure functions on tensors
def read_windows(features: torch.Tensor, points: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) features, (N, 2) float (row, col) points, (P, 2) offsets -> (N, C, P) windows,
    read bilinearly (outside the map: the border value)."""
    return sample_patches(features, points, offsets)


def pair_losses(windows: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """(N, C, P) windows and templates -> (N,) mean |window - template| per pair (an L1 mean)."""
    return (windows - templates).abs().mean(dim=(1, 2))


def background_mean(x_prev: torch.Tensor, x_prev_orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FreeDrag's background term: the MEAN over all (1, c, h, w) elements of
    ``|(x_{t-1}(z) - x_{t-1}^orig) (1 - mask)|`` (GoodDrag and DragDiffusion use the sum)."""
    return ((x_prev - x_prev_orig) * (1.0 - mask)).abs().mean()


def search_fractions(n: int, device=None) -> torch.Tensor:
    """(n,) float32 fractions 1/n, 2/n .. 1 of a search step (candidate 0, the point itself, is left out)."""
    return torch.arange(1, n + 1, device=device, dtype=torch.float32) / n


def toward(points: torch.Tensor, targets: torch.Tensor, length: float) -> torch.Tensor:
    """(N, 2) points and targets -> (N, 2) the move of at most ``length`` cells from each point
    towards its target (the whole way when it is nearer)."""
    remaining = (points - targets).pow(2).sum(dim=1).pow(0.5)  # (N,)
    return (length / (remaining + 1e-8)).clamp(max=1.0)[:, None] * (targets - points)


def segment(start: torch.Tensor, end: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """(N, 2) starts and ends, (S,) fractions -> (N, S, 2) the points at those fractions of each segment."""
    s = fractions[None, :, None]
    return (1 - s) * start[:, None, :] + s * end[:, None, :]


def candidate_losses(features: torch.Tensor, templates: torch.Tensor, candidates: torch.Tensor,
                     offsets: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) features, (N, C, P) templates, (N, S, 2) candidate points -> (N, S) the mean
    |window - template| of each candidate."""
    n, s, _ = candidates.shape
    windows = read_windows(features, candidates.reshape(n * s, 2), offsets)  # (N S, C, P)
    return (windows.view(n, s, *windows.shape[1:]) - templates[:, None]).abs().mean(dim=(2, 3))


def line_search(features: torch.Tensor, templates: torch.Tensor, points: torch.Tensor, targets: torch.Tensor,
                loss_ini: torch.Tensor, loss_end: torch.Tensor, done: torch.Tensor,
                config: DragConfig) -> torch.Tensor:
    """FreeDrag's line search (freedrag_utils.py ``get_each_point``, :46-86), all pairs at once.

    features (1, C, h, w): the latest no-grad features; templates (N, C, P); points, targets (N, 2)
    (row, col) cells; loss_ini, loss_end (N,): the per-pair loss at the first Adam step of the last
    search and after its steps; done (N,) bool. Returns the (N, 2) new points; per pair:

    - done: unchanged;
    - ``loss_end < 0.5 l_expected`` (matched): of ``search_points`` candidates on the next
      ``d_max`` cells towards the target, the one whose loss is nearest ``l_expected``;
    - else, ``loss_end < loss_ini`` (improving): unchanged;
    - else (backtrack): one ``d_max`` step back from the target, then of the candidates on the
      next ``2 d_max`` cells from there, the best match (least loss).
    """
    offsets = patch_offsets(config.window_radius, points.device)  # (P, 2)
    fractions = search_fractions(config.search_points, points.device)  # (S,)
    rows = torch.arange(points.shape[0], device=points.device)
    ahead = segment(points, points + toward(points, targets, config.d_max), fractions)  # (N, S, 2)
    forward_losses = candidate_losses(features, templates, ahead, offsets)  # (N, S)
    forward = ahead[rows, (forward_losses - config.l_expected).abs().argmin(dim=1)]  # (N, 2)
    back = points - toward(points, targets, config.d_max)  # (N, 2)
    behind = segment(back, back + toward(back, targets, 2 * config.d_max), fractions)  # (N, S, 2)
    backtrack = behind[rows, candidate_losses(features, templates, behind, offsets).argmin(dim=1)]
    matched = (loss_end < MATCHED * config.l_expected)[:, None]
    improving = (loss_end < loss_ini)[:, None]
    searched = torch.where(matched, forward, torch.where(improving, points, backtrack))
    return torch.where(done[:, None], points, searched)


def pairs_done(points: torch.Tensor, targets: torch.Tensor, loss_end: torch.Tensor, stop_distance: float,
               l_expected: float) -> torch.Tensor:
    """(N,) bool: a pair is done when its point is within ``stop_distance`` cells of its target and
    its loss is at most ``0.5 l_expected`` (freedrag_utils.py ``update_signs``, :36-43)."""
    distance = (points - targets).pow(2).sum(dim=1).pow(0.5)
    return (distance < stop_distance) & ~(loss_end > MATCHED * l_expected)


def update_templates(templates: torch.Tensor, windows: torch.Tensor, loss_end: torch.Tensor, done: torch.Tensor,
                     l_expected: float) -> torch.Tensor:
    """(N, C, P) templates and windows at the points, (N,) losses and done -> (N, C, P)
    ``w window + (1 - w) template``: w = 1 for a done pair, else ``1 / (1 + exp(a (loss - b)))`` with
    ``a = ln 9 / (0.6 l_expected)``, ``b = 0.2 l_expected`` (freedrag_utils.py:97-99, :157-158, :241-247):
    w is 0.5 at loss 0.2 l_expected, 0.1 at 0.8 l_expected (0.68 at 0): the better the window at the
    point matches, the more of it the template takes."""
    a = torch.log(torch.tensor(9.0, device=loss_end.device)) / (0.6 * l_expected)
    weight = 1 / (1 + (a * (loss_end - 0.2 * l_expected)).exp())  # (N,)
    weight = torch.where(done, torch.ones_like(weight), weight)[:, None, None]
    return weight * windows + (1 - weight) * templates


# ------------------------------------------------------------------------------------- the drag
@dataclass
class FreeDragState:
    """What carries over between rounds."""

    points: torch.Tensor
    """(N, 2) float current points, (row, col) cells (their ``current_targets``)."""
    targets: torch.Tensor
    """(N, 2) float targets, (row, col) cells."""
    templates: torch.Tensor
    """(N, C, P) one template per pair."""
    features: torch.Tensor
    """(1, C, h, w) features of the latest no-grad forward pass (their ``current_F``)."""
    x_prev_orig: torch.Tensor
    """(1, c, h_lat, w_lat) DDIM step of the unedited latent: the background term's reference."""
    loss_ini: torch.Tensor
    """(N,) per-pair loss at the first Adam step of the last search (0 before any)."""
    loss_end: torch.Tensor
    """(N,) per-pair loss after the last search's steps (0 before any)."""
    done: torch.Tensor
    """(N,) bool pairs done."""
    exhausted: bool = False
    """The budget stopped a step: the drag ends after this round."""
    stats: DragStats = field(default_factory=DragStats)


def start_state(model: DenoisingModel, latents: torch.Tensor, handles: torch.Tensor, ctx: DragContext,
                hook: FeatureHook) -> FreeDragState:
    """The templates at the handles and the background reference, from one no-grad forward pass of
    the unedited (1, c, h, w) latent; handles (N, 2) cells, held as float32 as theirs are."""
    config, schedule = ctx.config, ctx.schedule
    with torch.no_grad():
        eps = model.model_output(latents, schedule.timesteps[0], ctx.cond)
        f0 = hook.features(ctx.inputs.sup_size)  # (1, C, h_sup, w_sup)
        x_prev = ddim_step(latents, eps, schedule.alphas[0], schedule.alphas_prev[0], model.prediction_type)
    points = handles.to(torch.float32)
    zeros = torch.zeros(points.shape[0], device=points.device)
    return FreeDragState(
        points=points, targets=ctx.inputs.target_points.to(torch.float32),
        templates=read_windows(f0, points, patch_offsets(config.window_radius, points.device)),
        features=f0, x_prev_orig=x_prev, loss_ini=zeros, loss_end=zeros.clone(), done=zeros.bool(),
    )


def optimiser_step(model: DenoisingModel, z: torch.Tensor, optimizer: torch.optim.Optimizer,
                   state: FreeDragState, ctx: DragContext, hook: FeatureHook) -> torch.Tensor:
    """One Adam step on z_t: forward, ``sum_i pair_loss_i + lam x background_mean``, backward, step.
    Returns the (N,) per-pair losses of this forward pass (detached: before the step)."""
    config, schedule = ctx.config, ctx.schedule
    eps = model.model_output(z, schedule.timesteps[0], ctx.cond)
    features = hook.features(ctx.inputs.sup_size)  # (1, C, h_sup, w_sup), with gradient
    x_prev = ddim_step(z, eps, schedule.alphas[0], schedule.alphas_prev[0], model.prediction_type)
    windows = read_windows(features, state.points, patch_offsets(config.window_radius, z.device))
    losses = pair_losses(windows, state.templates)  # (N,)
    loss = losses.sum() + config.lam * background_mean(x_prev, state.x_prev_orig, ctx.inputs.mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses.detach()


def search_steps(model: DenoisingModel, z: torch.Tensor, optimizer: torch.optim.Optimizer,
                 state: FreeDragState, ctx: DragContext, hook: FeatureHook, bar) -> None:
    """Up to ``steps_per_search`` Adam steps within the budget (freedrag_utils.py:190-226); the first
    step's losses become ``loss_ini``; the steps end once every pair's loss is below 0.5 l_expected."""
    config = ctx.config
    for i in range(config.steps_per_search):
        if state.stats.drag_steps >= config.max_drag_steps:
            state.exhausted = True
            return
        losses = optimiser_step(model, z, optimizer, state, ctx, hook)
        state.stats.drag_steps += 1
        bar.update(1)
        if i == 0:
            state.loss_ini = losses
        if bool(losses.max() < MATCHED * config.l_expected):  # host read: the early end is a decision
            return


def close_round(model: DenoisingModel, z: torch.Tensor, state: FreeDragState, ctx: DragContext,
                hook: FeatureHook) -> None:
    """One no-grad forward pass of the new z_t: ``loss_end`` at the points, the done test, the
    template update; its features are the next line search's (freedrag_utils.py:228-248)."""
    config = ctx.config
    with torch.no_grad():
        model.model_output(z, ctx.schedule.timesteps[0], ctx.cond)
        features = hook.features(ctx.inputs.sup_size)  # (1, C, h_sup, w_sup)
        windows = read_windows(features, state.points, patch_offsets(config.window_radius, z.device))
        state.loss_end = pair_losses(windows, state.templates)
        state.done = pairs_done(state.points, state.targets, state.loss_end, config.stop_distance, config.l_expected)
        state.templates = update_templates(state.templates, windows, state.loss_end, state.done, config.l_expected)
        state.features = features
    state.stats.drag_rounds += 1


def drag_round(model: DenoisingModel, z: torch.Tensor, optimizer: torch.optim.Optimizer, state: FreeDragState,
               ctx: DragContext, hook: FeatureHook, bar) -> None:
    """A round: the line search (``hooks.line_search``, default :func:`line_search`), a StepEvent
    (tracking ``"search"``), the Adam steps, then :func:`close_round`."""
    config = ctx.config
    search = ctx.hooks.line_search or line_search
    state.points = search(state.features, state.templates, state.points, state.targets, state.loss_ini,
                          state.loss_end, state.done, config)
    state.stats.tracking_steps += 1
    if ctx.callback is not None:
        ctx.callback(StepEvent(
            "drag", state.stats.drag_steps, config.max_drag_steps, timestep=0, tracking="search",
            handle_points=ctx.to_input_points(state.points) if ctx.to_input_points else None,
        ))
    search_steps(model, z, optimizer, state, ctx, hook, bar)
    close_round(model, z, state, ctx, hook)


def drag(model: DenoisingModel, source: DragSource, ctx: DragContext,
         hook: FeatureHook) -> tuple[torch.Tensor, FreeDragState]:
    """FreeDrag's loop (freedrag_utils.py ``freedrag_update``, :175-248) from ``source``; returns the
    dragged (1, c, h, w) z_t and the final state."""
    config = ctx.config
    state = start_state(model, source.latents, source.handles, ctx, hook)
    z = source.latents.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=config.lr, fused=True if model.fused_adam and z.is_cuda else None)
    with tqdm(total=config.max_drag_steps, desc="drag", disable=not ctx.progress, leave=False) as bar:
        while not state.exhausted and not bool(state.done.all()):  # host read: once per round
            drag_round(model, z, optimizer, state, ctx, hook, bar)
    stats = state.stats
    stats.stop_reason = "reached" if bool(state.done.all()) else "budget"
    stats.drag_timesteps = int(stats.drag_steps > 0)
    stats.drag_steps_per_timestep = [stats.drag_steps]
    logger.info("FreeDrag: %d Adam steps in %d rounds, %s", stats.drag_steps, stats.drag_rounds, stats.stop_reason)
    return z.detach(), state


# ---------------------------------------------------------------------------------- denoising
def denoise(model: DenoisingModel, src: torch.Tensor, z: torch.Tensor,
            ctx: DragContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every denoising step from the drag timestep on; mutual self-attention from step
    ``mutual_attention_start_step`` (their MasaCtrl ``start_step``, registered before the first step:
    ``mutual_attention_while_dragging``), or one step later without it."""
    config = ctx.config
    start = (0 if config.mutual_attention_while_dragging else 1) + config.mutual_attention_start_step
    trajectory: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(ctx.schedule), desc="denoise", disable=not ctx.progress,
                                       leave=False))
        for k in range(len(ctx.schedule)):
            if k == start:
                stack.enter_context(model.mutual_attention(config.mutual_attention_start_layer))
            src, z = denoise_step(model, src, z, k, ctx, trajectory)
            bar.update(1)
    return z, trajectory


def run(model: DenoisingModel, source: DragSource, ctx: DragContext) -> DragOutcome:
    """FreeDrag from ``source``: the drag at the first timestep, then the denoising. The outcome's
    handles are the final searched points (float cells)."""
    clock = PhaseClock(model.device)
    mark = clock.now()
    with model.feature_hook(ctx.config.feature_block) as hook, ctx.hooks.phase("drag"):
        z, state = drag(model, source, ctx, hook)
    mark = clock.add("drag", mark)
    z, trajectory = denoise(model, source.latents, z, ctx)
    clock.add("denoise", mark)
    return DragOutcome(latents=z, handles=state.points, stats=state.stats, trajectory=trajectory,
                       timings={"drag": 0.0, "denoise": 0.0} | clock.seconds())


__all__ = [
    "MATCHED", "read_windows", "pair_losses", "background_mean", "search_fractions", "toward", "segment",
    "candidate_losses", "line_search", "pairs_done", "update_templates", "FreeDragState", "start_state",
    "optimiser_step", "search_steps", "close_round", "drag_round", "drag", "denoise", "run",
]
