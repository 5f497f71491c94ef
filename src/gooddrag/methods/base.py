"""The method seam: what a drag method is given, what it returns, and the hooks a caller can pass in.

A drag method (GoodDrag, DragDiffusion, GoodDrag+, a baseline) is a :class:`DragMethod` in
:data:`gooddrag.methods.registry.METHODS`: a function that takes the **model** as an argument
(k-diffusion's samplers do the same) and the inverted latent, and returns a :class:`DragOutcome`.
The pipeline (:class:`gooddrag.methods.pipeline.DragPipeline`) does what every method shares around
it: checking the inputs, the prompt, the LoRA, encoding, inversion and decoding.

Coordinate frames at this seam: handles and targets are (N, 2) (row, col) supervision-grid cells
(:class:`PreparedInputs`); latents are (B, c, h, w) fp32; :class:`StepEvent` handles are
(x, y) input-image pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..core.ddim import DDIMSchedule
from ..core.motion import MOTION_LOSSES
from ..core.tracking import track_points, track_points_subpixel
from ..models.backbone import Conditioning
from ..models.features import FeatureHook
from .config import DragConfig


@dataclass
class StepEvent:
    """What a step callback receives. ``latents`` is the edited branch's
    predicted clean latent (drag and denoise phases) for previews;
    ``handle_points`` the current handles in input-image (x, y) pixels. Drag
    events come after each tracking; ``step`` counts the tracking rounds done
    out of ``total`` = drag_end_step x track_per_step."""

    phase: str
    step: int
    total: int
    latents: torch.Tensor | None = None
    handle_points: np.ndarray | None = None
    timestep: int | None = None
    """Drag and denoise events: 0-based index of the denoising timestep."""
    tracking: str | None = None
    """Drag events: ``"start"`` (a drag timestep's first tracking) or ``"round"`` (a round's closing one);
    FreeDrag's: ``"search"`` (after each line search; ``step`` counts its optimiser steps done out of
    ``total`` = ``max_drag_steps``)."""


StepCallback = Callable[[StepEvent], None]


@dataclass
class DragStats:
    """Counts of the work the drag loop did (the tests count them)."""

    drag_timesteps: int = 0
    """Timesteps at which at least one optimiser step ran."""
    drag_steps: int = 0
    """Optimiser steps on the latent, all timesteps together."""
    tracking_steps: int = 0
    """Point trackings, all timesteps together (timestep starts and round ends)."""
    drag_rounds: int = 0
    """Tracking rounds completed (each ends after ``max_drag_per_track`` optimiser steps)."""
    drag_steps_per_timestep: list[int] = field(default_factory=list)
    stop_reason: str = "budget"
    """``budget`` (all steps ran), ``reached`` (handles at targets) or ``no_change`` (tracking stalled)."""


@dataclass
class PreparedInputs:
    """Inputs checked and converted to every frame the methods need."""

    image: Image.Image  # RGB, input size
    working_image: Image.Image  # RGB, working size
    input_size: tuple[int, int]  # (H, W) input image
    working_size: tuple[int, int]  # (h, w) working image
    sup_size: tuple[int, int]  # (h, w) supervision grid
    latent_size: tuple[int, int]
    handle_points_xy: np.ndarray  # (N, 2) input px
    target_points_xy: np.ndarray  # (N, 2) input px
    handle_points: torch.Tensor  # (N, 2) (row, col) supervision cells
    target_points: torch.Tensor  # (N, 2) (row, col) supervision cells
    mask: torch.Tensor  # (1, 1, h_lat, w_lat) float, 1 = editable
    mask_given: bool = True
    """False when the caller gave no mask (``mask`` is then all ones: everything may change)."""
    sup_mask: torch.Tensor | None = None
    """(1, 1, h_sup, w_sup) float 0/1 on the supervision grid, the step before ``mask`` (FastDrag resizes it bilinearly)."""


# ------------------------------------------------------------------------------------------ hooks
class Tracker(Protocol):
    """Point tracking: (1, C, h, w) features, (N, C) reference vectors at the original handles,
    (N, 2) current handles (row, col cells) -> (N, 2) new handles (row, col cells)."""

    def __call__(self, features: torch.Tensor, reference_vectors: torch.Tensor, handles: torch.Tensor,
                 config: DragConfig) -> torch.Tensor: ...


class MotionLoss(Protocol):
    """Motion supervision: (1, C, h, w) features, (N, C, P) reference patches, (N, 2) handles and
    targets (row, col cells) -> scalar loss."""

    def __call__(self, features: torch.Tensor, reference_patches: torch.Tensor, handles: torch.Tensor,
                 targets: torch.Tensor, config: DragConfig) -> torch.Tensor: ...


class LineSearch(Protocol):
    """FreeDrag's line search (:func:`gooddrag.methods.freedrag.line_search`): (1, C, h, w) latest
    no-grad features, (N, C, P) templates, (N, 2) current points and targets (row, col cells), (N,)
    per-pair losses at the last search's first step (``loss_ini``) and after its steps (``loss_end``),
    (N,) bool pairs done -> (N, 2) the searched points (float cells; done pairs unchanged)."""

    def __call__(self, features: torch.Tensor, templates: torch.Tensor, points: torch.Tensor,
                 targets: torch.Tensor, loss_ini: torch.Tensor, loss_end: torch.Tensor, done: torch.Tensor,
                 config: DragConfig) -> torch.Tensor: ...


def track(features: torch.Tensor, reference_vectors: torch.Tensor, handles: torch.Tensor,
          config: DragConfig) -> torch.Tensor:
    """The default :class:`Tracker`: whole cells (the authors' codes) or, with
    ``config.subpixel_tracking`` (GoodDrag+), sub-cell; on the features' device."""
    tracker = track_points_subpixel if config.subpixel_tracking else track_points
    return tracker(features, reference_vectors, handles, r2=config.r2)


def motion_loss(features: torch.Tensor, reference_patches: torch.Tensor, handles: torch.Tensor,
                targets: torch.Tensor, config: DragConfig) -> torch.Tensor:
    """The default :class:`MotionLoss`: GoodDrag's information-preserving loss (Eq. 8) or
    DragDiffusion's (Eq. 4), by ``config.information_preserving``."""
    loss_fn = MOTION_LOSSES["gooddrag" if config.information_preserving else "dragdiffusion"]
    return loss_fn(features, reference_patches, handles, targets,
                   r1=config.r1, beta=config.beta, stop_distance=config.stop_distance)


def no_phase(name: str) -> AbstractContextManager:
    """The default phase marker: does nothing."""
    return contextlib.nullcontext()


def read_to_host(values: torch.Tensor) -> Any:
    """The default host read: the tensor's values as Python numbers (``Tensor.tolist``)."""
    return values.tolist()


@dataclass(frozen=True)
class DragHooks:
    """What a caller may swap in without touching the method (benchmarks and harnesses use these).

    track / motion_loss: see :class:`Tracker` and :class:`MotionLoss`; pixels: PIL image (w, h) ->
    (1, 3, h, w) tensor in [-1, 1] on the model's device (None: the backbone's image processor);
    phase: a context manager entered around each phase of the edit (``"lora"``, ``"inversion"``,
    ``"denoise"``, ``"decode"``, and ``"drag"`` inside ``"denoise"`` around each drag timestep and
    around AIDD's reference trajectory);
    line_search: FreeDrag's (:class:`LineSearch`; None: :func:`gooddrag.methods.freedrag.line_search`),
    which a caller may wrap to record the searched points (research/parity_freedrag.py does) or
    replace; host_read: tensor -> its values as Python numbers (default :func:`read_to_host`), through
    which the edit's reads of device values go: AIDD's stop decision after each tracking ((2,) bool:
    reached, moved), its drag-loss threshold test (a scalar, only when ``drag_loss_threshold`` > 0)
    and the LoRA's per-step losses at the end of its training ((steps,) fp32); ``gooddrag bench
    estimate`` answers them with stand-in values (its tensors have shapes, not values).
    GoodDrag, DragDiffusion and DragNoise use ``track`` and ``motion_loss``; FreeDrag only
    ``line_search``, ``pixels`` and ``phase``. DragNoise's stop decision after each tracking ((1,)
    bool: reached) also goes through ``host_read``.
    """

    track: Tracker = track
    motion_loss: MotionLoss = motion_loss
    pixels: Callable[[Image.Image], torch.Tensor] | None = None
    phase: Callable[[str], AbstractContextManager] = no_phase
    line_search: LineSearch | None = None
    host_read: Callable[[torch.Tensor], Any] = read_to_host


# ------------------------------------------------------------------------------------ the seam
class DenoisingModel(Protocol):
    """The backbone as a drag method sees it (:class:`gooddrag.methods.pipeline.DragPipeline` is one)."""

    device: torch.device
    fused_adam: bool

    @property
    def prediction_type(self) -> str: ...

    def model_output(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """(B, c, h, w) fp32 latents at timestep ``t`` -> the model's fp32 output (eps or v)."""

    def feature_hook(self, block: int) -> FeatureHook:
        """A context manager keeping decoder block ``block``'s output of the latest forward pass."""

    def mutual_attention(self, start_layer: int) -> AbstractContextManager:
        """From here on, the edited half of each batch attends to the source half (layers >= ``start_layer``)."""

    def block_output_override(self, block: int, value: torch.Tensor) -> AbstractContextManager:
        """While entered, decoder block ``block``'s output (index as in :meth:`feature_hook`; 0 is the
        mid block, the UNet's bottleneck) is ``value`` (B, C, h, w) fp32 in every forward pass, cast
        to the UNet's dtype, differentiably: gradients of the model output and of later blocks'
        features reach ``value`` (DragNoise optimises the bottleneck this way)."""

    def self_attention_cache(self, start_layer: int) -> Any:
        """A :class:`gooddrag.models.attention.SelfAttentionCache` of self-attention layers >= ``start_layer``
        (-1: the decoder's first): ``record()`` and ``replay()`` context managers, keyed by timestep."""


@dataclass(frozen=True)
class DragContext:
    """Everything a drag method is given besides the model and the latent."""

    inputs: PreparedInputs
    schedule: DDIMSchedule
    """On the model's device; ``schedule.timesteps[0]`` is the inverted latent's level."""
    cond: Conditioning
    config: DragConfig
    hooks: DragHooks = DragHooks()
    callback: StepCallback | None = None
    progress: bool = True
    keep_trajectory: bool = False
    to_input_points: Callable[[torch.Tensor], np.ndarray] | None = None
    """(N, 2) (row, col) supervision cells -> (N, 2) (x, y) input-image pixels (for step events)."""


@dataclass
class DragSource:
    """Where the edit starts: an inverted latent (1, c, h, w) and its handles (N, 2) supervision cells."""

    latents: torch.Tensor
    handles: torch.Tensor
    extras: Any = None
    """What the method's :attr:`DragMethod.inversion_context` yielded around the inversion (None without one)."""


@dataclass
class DragOutcome:
    """What a drag method returns."""

    latents: torch.Tensor
    """(1, c, h, w) clean edited latent."""
    handles: torch.Tensor
    """(N, 2) final handles, (row, col) supervision cells."""
    stats: DragStats
    trajectory: list[torch.Tensor]
    """Predicted clean latents (1, c, h, w), one per drag timestep, when asked for."""
    timings: dict[str, float]
    """Seconds per phase (``drag``, ``denoise``)."""


class DragRun(Protocol):
    def __call__(self, model: DenoisingModel, source: DragSource, ctx: DragContext) -> DragOutcome: ...


@dataclass(frozen=True)
class DragMethod:
    """One drag method: its name (``DragConfig.method``), what it runs and what it can take (its words
for people are :data:`gooddrag.methods.presets.METHOD_LABELS`)."""

    name: str
    run: DragRun
    faithful: bool = True
    """True: does what its authors' code does (a parity run shows it); False: ours (docs/method.md)."""
    backbones: tuple[str, ...] = ("sd", "sdxl")
    """Backbone kinds (``gooddrag.models.backbone``) it runs on."""
    mask_required: str | None = None
    """Set when the method cannot run without a mask: the sentence that says why (front ends refuse
    a maskless run with it before loading anything; the pipeline's check refuses it too)."""
    check_inputs: Callable[[PreparedInputs, DragConfig], None] | None = None
    """Refuses inputs the method cannot work with (raise InputsCannotWorkError); the pipeline calls it at
    the end of its own input check, before any work."""
    inversion_context: Callable[[DenoisingModel, DragConfig], AbstractContextManager] | None = None
    """A context manager the pipeline enters around the DDIM inversion of the input; what it yields
    reaches the method as :attr:`DragSource.extras` (FastDrag records self-attention inputs there)."""


__all__ = [
    "StepEvent", "StepCallback", "DragStats", "PreparedInputs", "Tracker", "MotionLoss", "LineSearch", "track",
    "motion_loss", "read_to_host",
    "DragHooks", "DenoisingModel", "DragContext", "DragSource", "DragOutcome", "DragRun", "DragMethod",
]
