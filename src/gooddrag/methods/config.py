"""Method configurations: one frozen dataclass, named presets in a registry.

Every default names its source. "official" means a value read in the GoodDrag authors' public
implementation (ICLR 2025, arXiv 2404.07206) or, for the DragDiffusion
baseline, DragDiffusion's (Shi et al., CVPR 2024); see docs/method.md ("Presets") for each default's source.
FreeDrag (Ling et al., CVPR 2024) has its own dataclass, :class:`FreeDragConfig`, whose defaults cite
LPengYang/FreeDrag (folder ``FreeDrag--diffusion--version``, snapshot a35d988) by file and line.

Coordinate frames used by the spatial settings:
- ``r1`` (motion patch radius), ``r2`` (tracking radius), ``beta`` (step length)
  and the 2-cell stop distance are in *supervision-grid cells* (the feature map
  resized to ``sup_res_scale`` of the working image).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.fastdrag_warp import FILLS as FASTDRAG_FILLS
from ..core.warp import FILLS, IMAGE_FILLS, WARP_FIELDS
from ..errors import GoodDragError
from ..models import sdxl

METHODS = ("gooddrag", "dragdiffusion", "gooddrag-plus", "freedrag", "fastdrag", "dragnoise")
"""``gooddrag``, ``dragdiffusion`` and ``freedrag`` do what their authors' code does; ``gooddrag-plus`` is
GoodDrag with our options below (docs/method.md, "GoodDrag+"). ``freedrag`` takes a
:class:`FreeDragConfig`, ``fastdrag`` a :class:`FastDragConfig`, ``dragnoise`` a :class:`DragNoiseConfig`
(:func:`config_class`); ``dragnoise`` does what its authors' code does too."""


@dataclass(frozen=True)
class DragConfig:
    """All settings of one drag run. Build with :func:`get_preset` and ``dataclasses.replace``."""

    method: str = "gooddrag"
    """``"gooddrag"`` (AIDD + information-preserving loss), ``"dragdiffusion"`` (one timestep) or
    ``"gooddrag-plus"`` (GoodDrag with the options of the "GoodDrag+" section on)."""

    # --- working resolution -------------------------------------------------
    resolution: int = 512
    """Working long side in image pixels (official: 512x512 inputs). Sides are rounded to what the UNet needs."""

    # --- LoRA (docs/method.md, "Pipeline" 3) ----------------------------------
    lora_steps: int = 70
    """LoRA optimisation steps; 0 = no LoRA (official GoodDrag 70, DragDiffusion 80)."""
    lora_rank: int = 16
    """LoRA rank on q, k, v, out of every attention layer (official 16)."""
    lora_lr: float = 5e-4
    """AdamW learning rate, constant schedule (official 5e-4)."""
    lora_batch_size: int = 4
    """Copies of the image per LoRA step, each with its own noise and timestep (official 4: GoodDrag's
    bench_gooddrag.py; DragDiffusion's drag_ui.py and drag_bench_evaluation/run_lora_training.py)."""
    lora_weight_decay: float = 1e-2
    """AdamW weight decay (official 1e-2)."""

    # --- DDIM (docs/method.md, "Pipeline" 5) ----------------------------------
    num_inference_steps: int = 50
    """DDIM steps of the full schedule (official 50)."""
    inversion_strength: float = 0.75
    """Fraction of the schedule inverted: round(0.75 * 50) = 38 steps (official GoodDrag 0.75, DragDiffusion 0.7)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance; 1 = none (official 1)."""

    # --- features (docs/method.md, "Motion supervision") ----------------------
    feature_block: int = 3
    """Index into [mid_block, up_blocks[0], up_blocks[1], ...] whose output is the drag feature (official 3)."""
    sup_res_scale: float = 0.5
    """Supervision grid = this fraction of the working image size (official 0.5)."""

    # --- dragging -----------------------------------------------------------
    drag_end_step: int = 7
    """Number of denoising timesteps with drag work (official GoodDrag 7; DragDiffusion drags at 1)."""
    track_per_step: int = 10
    """Point-tracking rounds per drag timestep (official GoodDrag 10; DragDiffusion: 80, one step each)."""
    max_drag_per_track: int = 3
    """Optimiser steps between two trackings (official GoodDrag 3, DragDiffusion 1)."""
    drag_loss_threshold: float = 0.0
    """End a tracking round early, after an optimiser step whose drag loss (motion term only) is
    <= this x (2 r1)^2 (the authors' scaling, GoodDrag pipeline.py ``__init__``); 0 = off (their
    benchmark script: 0). At 0 the test could only fire when every pair is done, which the
    reached-target stop already ends, so it costs no device sync."""
    max_track_no_change: int = 5
    """Stop dragging after this many tracking rounds in a row moved no handle; 0 = off
    (official 5 in the authors' benchmark script, 10 in their UI)."""
    lr: float = 0.02
    """Adam learning rate on the latent (official GoodDrag 0.02, DragDiffusion 0.01)."""
    r1: int = 4
    """Motion-supervision patch radius in supervision cells (official GoodDrag 4, DragDiffusion 1)."""
    r2: int = 12
    """Point-tracking search radius in supervision cells (official GoodDrag 12, DragDiffusion 3)."""
    beta: float = 4.0
    """Step length towards the target in supervision cells (official GoodDrag 4; DragDiffusion uses a unit step)."""
    lam: float = 0.1
    """Weight of the background term (official 0.1 benchmark script, 0.2 UI)."""
    stop_distance: float = 2.0
    """A handle closer than this to its target (supervision cells) is done (official 2)."""
    information_preserving: bool = True
    """GoodDrag's loss (compare with the ORIGINAL handle feature); False = DragDiffusion's (current handle)."""
    track_at_timestep_start: bool = True
    """Track the handles once at the start of every drag timestep, on its first forward pass; this
    tracking does not count towards ``max_track_no_change`` (GoodDrag pipeline.py ``gooddrag_step``;
    DragDiffusion's single timestep starts from the user's handles: False)."""
    track_on_fresh_features: bool = False
    """Where a round's closing tracking looks. False (the authors' GoodDrag code): on the features of
    the round's LAST forward pass, computed before its last Adam step, so tracking lags one step.
    True: on the features of the latent after that step (the next forward pass), as DragDiffusion's
    code does every step. Ours, off in the ``gooddrag`` preset (docs/method.md, differences)."""

    # --- denoising (docs/method.md, "AIDD loop") ------------------------------
    mutual_attention_start_layer: int = 10
    """Self-attention layers (counted down, mid, up) from this index on use mutual self-attention
    (official 10, i.e. layers 10..15 of SD1.5's 16)."""
    mutual_attention_while_dragging: bool = False
    """False (the authors' GoodDrag code, pipeline.py ``good_drag``): mutual self-attention is
    switched on at the first denoising step WITHOUT drag work; the DDIM steps of the drag timesteps
    denoise both branches with plain self-attention. True: on from the first denoising step,
    including the drag timesteps' DDIM steps (DragDiffusion's code, whose denoising starts at its
    one drag timestep with mutual self-attention registered)."""
    mutual_attention_start_step: int = 0
    """Denoising steps, counted from where mutual self-attention would start, before it is switched
    on (MasaCtrl's ``start_step``; 0 in both authors' codes)."""

    # --- GoodDrag+ (ours, docs/method.md "GoodDrag+"; off in the faithful presets) ----
    latent_warp: bool = False
    """Before the drag, move the masked region of the inverted latent along the drag field by
    whole latent cells (:mod:`gooddrag.core.warp`), and start the handles where it took them; AIDD
    then corrects the rest. Needs a mask that leaves some of the image unchanged (skipped, with a
    log line, without one). Not in either authors' code."""
    warp_fill: str = "noise"
    """What the cells the warp leaves behind get: ``keep``, ``neighbours`` or ``noise``
    (:data:`gooddrag.core.warp.FILLS`); chosen on the shapes benchmark's tuning seeds (docs/benchmarks.md)."""
    warp_field: str = "translations"
    """How ``latent_warp`` / ``image_warp`` turn the pairs into a warp (:data:`gooddrag.core.warp.WARP_FIELDS`):
    ``translations`` (the pairs' displacements blended by inverse distance) or ``affine`` (each
    connected region of the mask moved by the map its pairs fit: a turn, a scale or a stretch)."""
    image_warp: bool = False
    """Before the drag, warp the working IMAGE's masked region in pixel space (bilinear, exact for
    sub-cell moves and turns), encode and invert it, and start the drag there, with the handles
    where the warp took them; the source branch stays the unedited inversion. Instead of
    ``latent_warp`` (one of the two). Not in either authors' code."""
    image_warp_fill: str = "behind"
    """What ``image_warp`` gives the pixels the moved content uncovers (:data:`gooddrag.core.warp.IMAGE_FILLS`):
    ``behind`` (the image behind them, another object included) or ``around`` (grown in from the
    pixels around the mask). Chosen on the tuning seeds (docs/benchmarks.md)."""
    subpixel_tracking: bool = False
    """Refine each tracked handle to a fraction of a cell (:mod:`gooddrag.core.tracking`), so the stop
    rule and the final handles are not whole cells. Not in either authors' code."""

    text_tokens: int = 0
    """SD3/FLUX only: the T5 token slots of the prompt (``max_sequence_length`` of their pipelines;
    without T5, SD3 feeds as many zeros). 0: the pipeline's default (SD3 256, FLUX 512)."""
    distilled_guidance: float = 3.5
    """FLUX.1-dev only: its guidance-embedding input (a distilled guidance, not CFG); 3.5 is
    ``FluxPipeline``'s default ``guidance_scale``. Ignored by models without the embedding."""

    seed: int = 42
    """Seed of the LoRA's noise and timesteps, and of the warp's ``noise`` fill (the drag itself is deterministic)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GoodDragError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if type(self) is not config_class(self.method):
            raise GoodDragError(f"method {self.method!r} takes a {config_class(self.method).__name__}, not a "
                                f"{type(self).__name__} (start from its preset: get_preset({self.method!r}))")
        checks = {
            "resolution": self.resolution >= 8,
            "lora_steps": self.lora_steps >= 0,
            "lora_rank": self.lora_rank >= 1,
            "lora_batch_size": self.lora_batch_size >= 1,
            "num_inference_steps": self.num_inference_steps >= 1,
            "inversion_strength": 0.0 < self.inversion_strength <= 1.0,
            "drag_end_step": self.drag_end_step >= 1,
            "track_per_step": self.track_per_step >= 1,
            "max_drag_per_track": self.max_drag_per_track >= 1,
            "max_track_no_change": self.max_track_no_change >= 0,
            "lr": self.lr > 0,
            "r1": self.r1 >= 1,
            "r2": self.r2 >= 0,
            "beta": self.beta > 0,
            "lam": self.lam >= 0,
            "sup_res_scale": 0.0 < self.sup_res_scale <= 1.0,
            "feature_block": self.feature_block >= 0,
            "drag_loss_threshold": self.drag_loss_threshold >= 0,
            "mutual_attention_start_layer": self.mutual_attention_start_layer >= 0,
            "mutual_attention_start_step": self.mutual_attention_start_step >= 0,
            "text_tokens": self.text_tokens >= 0,
            "distilled_guidance": self.distilled_guidance >= 0,
        }
        checks["warp_fill"] = self.warp_fill in FILLS
        checks["warp_field"] = self.warp_field in WARP_FIELDS
        checks["image_warp_fill"] = self.image_warp_fill in IMAGE_FILLS
        checks["image_warp"] = not (self.image_warp and self.latent_warp)  # two starts of the drag: one only
        for name, ok in checks.items():
            if not ok:
                raise GoodDragError(f"invalid setting {name}={getattr(self, name)!r}")
        if self.drag_end_step > self.inversion_steps:
            raise GoodDragError(
                f"drag_end_step={self.drag_end_step} exceeds the {self.inversion_steps} inverted timesteps"
            )

    @property
    def inversion_steps(self) -> int:
        """Number of inverted (and later denoised) DDIM steps."""
        return max(1, round(self.inversion_strength * self.num_inference_steps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DragConfig":
        """The config ``to_dict`` wrote, as the class its ``method`` takes (:func:`config_class`):
        ``DragConfig.from_dict`` of a FreeDrag run's settings gives a :class:`FreeDragConfig`."""
        method = data.get("method", cls.__dataclass_fields__["method"].default)
        klass = config_class(method) if method in METHODS else cls  # an unknown method: __post_init__ says so
        if not issubclass(klass, cls):
            raise GoodDragError(f"method {method!r} takes a {klass.__name__}, not a {cls.__name__}")
        names = {f.name for f in dataclasses.fields(klass)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise GoodDragError(f"unknown setting(s): {', '.join(unknown)}")
        return klass(**data)


def check_baseline_settings(config: DragConfig, label: str, own: tuple[str, ...], checks: dict[str, bool]) -> None:
    """The refusals a baseline's config shares: a value of a setting the method does not read
    (``config.UNUSED``) other than DragConfig's default (it would change nothing), GoodDrag+'s
    options, more than one drag timestep, and the method's own ``checks`` (setting -> valid)."""
    defaults = {f.name: f.default for f in dataclasses.fields(DragConfig)}
    for name in getattr(config, "UNUSED", ()):
        if getattr(config, name) != defaults[name]:
            raise GoodDragError(f"{name} is not a {label} setting (it would change nothing); {label}'s own: "
                                f"{', '.join(own)}")
    shared = {"drag_end_step": config.drag_end_step == 1, "image_warp": not config.image_warp,
              "latent_warp": not config.latent_warp, "subpixel_tracking": not config.subpixel_tracking}
    for name, ok in (shared | checks).items():
        if not ok:
            raise GoodDragError(f"invalid setting {name}={getattr(config, name)!r} for method {config.method}")


@dataclass(frozen=True)
class FreeDragConfig(DragConfig):
    """FreeDrag's settings (Ling et al., CVPR 2024; docs/method.md, "FreeDrag"). Sources below are in
    LPengYang/FreeDrag, folder ``FreeDrag--diffusion--version`` (snapshot a35d988): ``drag_ui.py`` (the
    UI's values; the folder has no benchmark script), ``utils/freedrag_utils.py`` (``freedrag_update``)
    and ``utils/ui_utils.py`` (``run_drag``).

    Of the inherited fields FreeDrag reads the LoRA ones, ``num_inference_steps``,
    ``inversion_strength``, ``feature_block``, ``sup_res_scale``, ``lr``, ``lam`` (weight of a MEAN
    background term here, a sum in GoodDrag/DragDiffusion), ``stop_distance`` and the mutual
    self-attention ones; the others (tracking rounds, r1, r2, beta, the GoodDrag+ options) are not
    used and keep DragConfig's defaults. Distances are in supervision-grid cells."""

    method: str = "freedrag"
    lora_steps: int = 200
    """drag_ui.py:88 (LoRA training steps)."""
    lora_lr: float = 2e-4
    """drag_ui.py:89."""
    lora_batch_size: int = 4
    """drag_ui.py:90 (rank 16 is drag_ui.py:91, DragConfig's default)."""
    inversion_strength: float = 0.7
    """drag_ui.py:62: round(0.7 x 50) = 35 of 50 steps (ui_utils.py:213-214)."""
    drag_end_step: int = 1
    """One drag timestep, ``timesteps[50 - 35]`` (ui_utils.py:272): must be 1."""
    lr: float = 0.01
    """Adam on the latent, drag_ui.py:65 (``latent_lr``)."""
    lam: float = 10.0
    """drag_ui.py:57; weighs ``mean |x_{t-1}(z) - x_{t-1}^orig| x (1 - mask)`` (freedrag_utils.py:211)."""
    mutual_attention_while_dragging: bool = True
    """MasaCtrl registered before the denoising, which starts at the drag timestep (ui_utils.py:281-298),
    start_step 0 and start_layer 10 (drag_ui.py:66-67): DragDiffusion's preset."""

    l_expected: float = 1.0
    """Expected feature distance (mean L1) of a window moved one step (drag_ui.py:58); the line search
    aims at it, and ``0.5 l_expected`` is the per-pair loss below which a pair counts as matched
    (freedrag_utils.py:156); the template weight's slope and centre derive from it (:157-158)."""
    d_max: float = 5.0
    """Longest move of a point per line search, supervision cells (drag_ui.py:59)."""
    window_radius: int = 4
    """Template window (2 r + 1)^2 around each point, supervision cells (``win_r``, freedrag_utils.py:126)."""
    search_points: int = 10
    """Candidates per line search, at 1/n .. n/n of the step (``interval_number``, freedrag_utils.py:50)."""
    steps_per_search: int = 5
    """At most this many Adam steps between two line searches (freedrag_utils.py:190)."""
    max_drag_steps: int = 300
    """Budget of Adam steps in all (``max_step``, drag_ui.py:53)."""

    UNUSED: ClassVar[tuple[str, ...]] = (
        "track_per_step", "max_drag_per_track", "max_track_no_change", "r1", "r2", "beta", "drag_loss_threshold",
        "information_preserving", "track_at_timestep_start", "track_on_fresh_features", "warp_fill", "warp_field",
        "image_warp_fill",
    )
    """DragConfig settings FreeDrag does not read: a value other than DragConfig's default is refused
    (it would change nothing), and the command line's help does not list a FreeDrag default for them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_baseline_settings(self, 'FreeDrag', ('l_expected', 'd_max', 'window_radius', 'search_points', 'steps_per_search', 'max_drag_steps'), {
            "l_expected": self.l_expected > 0,
            "d_max": self.d_max > 0,
            "window_radius": self.window_radius >= 0,
            "search_points": self.search_points >= 1,
            "steps_per_search": self.steps_per_search >= 1,
            "max_drag_steps": self.max_drag_steps >= 0,
        })


@dataclass(frozen=True)
class FastDragConfig(DragConfig):
    """FastDrag's settings (Zhao et al., NeurIPS 2024; docs/method.md, "FastDrag"). Sources below are in
    XuanjiaZ/FastDrag (snapshot def3c4e): ``drag_ui.py`` (the UI's values),
    ``drag_bench_evaluation/run_fast_drag.py`` (the benchmark's), ``utils/ui_utils.py`` (``run_drag``, task
    "continuous drag") and ``utils/continuous_drag.py`` (the warp).

    No optimisation: one warp of the inverted latent inside the mask, then DDIM steps with the
    inversion's self-attention keys and values replayed. Of the inherited fields FastDrag reads the
    LoRA ones (0 steps: no LoRA), ``num_inference_steps``, ``inversion_strength``, ``sup_res_scale``,
    ``resolution`` and ``drag_end_step`` (1: the warp's timestep, for the trajectory); the drag loop's
    are not used and keep DragConfig's defaults."""

    method: str = "fastdrag"
    lora_steps: int = 0
    """No LoRA for continuous drag: ``use_lora = 0`` (ui_utils.py:369-370); the UI's "not use"
    (drag_ui.py:79); the benchmark's "default" keeps 0 (run_fast_drag.py:137)."""
    num_inference_steps: int = 10
    """drag_ui.py:61; run_fast_drag.py:60."""
    inversion_strength: float = 0.7
    """drag_ui.py:89; run_fast_drag.py:56: round(0.7 x 10) = 7 steps (ui_utils.py:287-288); the warp is at
    ``timesteps[10 - 7]`` (ui_utils.py:450)."""
    drag_end_step: int = 1
    """The one timestep the edit happens at (the warp's): must be 1."""

    fastdrag_fill: str = "interpolation"
    """What the masked cells the warp leaves empty get (:data:`gooddrag.core.fastdrag_warp.FILLS`;
    ``fill_mode``, drag_ui.py:66; continuous_drag.py:127-134, :213-214)."""
    kv_copy: bool = True
    """Replay the inversion's self-attention keys and values while denoising (``use_kv_copy = 1``,
    ui_utils.py:372; drag_pipeline.py:493; unet_drag/attention_processor.py:1261-1278)."""
    kv_start_layer: int = -1
    """First self-attention layer (counted down, mid, up) whose keys and values are cached; -1: the
    decoder's first, from the UNet's layout (:func:`gooddrag.models.attention.decoder_self_attention_start`;
    their ``updown == 'up'`` layers, unet_2d_blocks.py:2277, attention.py:173: 7 on SD1.5)."""

    UNUSED: ClassVar[tuple[str, ...]] = (
        "track_per_step", "max_drag_per_track", "max_track_no_change", "r1", "r2", "beta", "lr", "lam",
        "stop_distance", "drag_loss_threshold", "information_preserving", "track_at_timestep_start",
        "track_on_fresh_features", "warp_fill", "warp_field", "image_warp_fill", "mutual_attention_while_dragging",
        "mutual_attention_start_step",
    )
    """DragConfig settings FastDrag does not read: a value other than DragConfig's default is refused."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_baseline_settings(self, 'FastDrag', ('fastdrag_fill', 'kv_copy', 'kv_start_layer'), {
            "fastdrag_fill": self.fastdrag_fill in FASTDRAG_FILLS,
            "kv_start_layer": self.kv_start_layer >= -1,
        })


@dataclass(frozen=True)
class DragNoiseConfig(DragConfig):
    """DragNoise's settings (Liu et al., CVPR 2024; docs/method.md, "DragNoise"). Sources below are in
    haofengl/DragNoise (snapshot 1072731): ``drag_bench_evaluation/run_drag_diffusion.py`` and
    ``run_lora_training.py`` (the benchmark's values: the preset's), ``drag_ui.py`` (the UI's),
    ``utils/drag_utils.py`` (``drag_diffusion_update``), ``utils/ui_utils.py`` (``run_drag``) and
    ``drag_pipeline.py`` (the UNet forward and the sampling).

    DragNoise is DragDiffusion's drag loop (one timestep; per optimiser step one forward pass, a
    tracking on its fresh features from the second step on, the stop test, one Adam step) with the
    UNet's bottleneck, the mid block's output, optimised instead of the latent, and the optimised
    bottleneck put in place of the UNet's own while denoising. Of the inherited fields it reads the
    LoRA ones, ``num_inference_steps``, ``inversion_strength``, ``feature_block``, ``sup_res_scale``,
    ``track_per_step`` (its budget of optimiser steps), ``lr``, ``lam``, ``r1``, ``r2``, ``beta``,
    ``stop_distance`` and ``information_preserving`` (False: DragDiffusion's loss, theirs); the others
    are :attr:`UNUSED`. Distances are in supervision-grid cells."""

    method: str = "dragnoise"
    lora_steps: int = 200
    """The benchmark's LoRA script (run_lora_training.py:84-87: 200 steps; the drag loads the step-200
    checkpoint, run_drag_diffusion.py:249); the UI trains 60 (drag_ui.py:81)."""
    lora_lr: float = 2e-4
    """run_lora_training.py:87 (UI: 5e-4, drag_ui.py:82)."""
    lora_batch_size: int = 1
    """The benchmark's call leaves out ``lora_batch_size`` (run_lora_training.py:84-87), a required
    argument of the shipped ``train_lora`` (utils/lora_utils.py:116), so it fails as shipped; it runs
    with the default the signature has commented out, ``lora_batch_size=1`` (lora_utils.py:119, not
    in DragDiffusion's copy), which we take. The UI trains with 4 (drag_ui.py:83). Rank 16
    (run_lora_training.py:87, drag_ui.py:84) is DragConfig's default."""
    inversion_strength: float = 0.7
    """run_drag_diffusion.py:257 (UI: drag_ui.py:55): round(0.7 x 50) = 35 of 50 steps
    (run_drag_diffusion.py:94-95)."""
    drag_end_step: int = 1
    """One drag timestep, ``timesteps[50 - 35]`` (run_drag_diffusion.py:156): must be 1."""
    track_per_step: int = 80
    """Optimiser steps, each with its own forward pass and, from the second on, a tracking first
    (``n_pix_step``: run_drag_diffusion.py:261; UI 60, drag_ui.py:52; drag_utils.py:107-124)."""
    lr: float = 0.02
    """Adam on the bottleneck (``latent_lr``: run_drag_diffusion.py:260; UI 0.01, drag_ui.py:58;
    drag_utils.py:86-87)."""
    r1: int = 1
    """Motion patch radius ``r_m`` (run_drag_diffusion.py:100; ui_utils.py:209)."""
    r2: int = 3
    """Tracking radius ``r_p`` (run_drag_diffusion.py:101; ui_utils.py:210)."""
    beta: float = 1.0
    """A unit step towards the target (drag_utils.py:137)."""
    lam: float = 0.2
    """run_drag_diffusion.py:259 (UI 0.1, drag_ui.py:57); weighs the SUM of
    ``|x_{t-1}(h) - x_{t-1}^orig| (1 - mask)`` (drag_utils.py:145), always on."""
    information_preserving: bool = False
    """DragDiffusion's motion term: the patch at the CURRENT handle, detached (drag_utils.py:139-142)."""

    propagation_end_step: int = 0
    """The last this-many denoising steps run with the UNet's own bottleneck; every step before them
    has the optimised one (``end_step``: run_drag_diffusion.py:258 and drag_ui.py:56, both 0;
    drag_pipeline.py:457-468). Their UI's guideline suggests 10 for more detail (drag_ui.py:95)."""
    background_without_mask: bool = True
    """With no mask given: True (their code, whose mask is then all zeros, ui_utils.py:242-245) the
    background term holds the whole image (drag_utils.py:92, :145); False: it holds nothing (our
    no-mask convention, everything may change)."""

    UNUSED: ClassVar[tuple[str, ...]] = (
        "max_drag_per_track", "max_track_no_change", "drag_loss_threshold", "track_at_timestep_start",
        "track_on_fresh_features", "mutual_attention_start_layer", "mutual_attention_while_dragging",
        "mutual_attention_start_step", "warp_fill", "warp_field", "image_warp_fill",
    )
    """DragConfig settings DragNoise does not read (its loop is DragDiffusion's: one optimiser step per
    tracking, on fresh features; no mutual self-attention): a value other than DragConfig's default is
    refused (it would change nothing)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_baseline_settings(self, 'DragNoise', ('propagation_end_step', 'background_without_mask'), {
            "propagation_end_step": 0 <= self.propagation_end_step <= self.inversion_steps,
            # the features must come after the bottleneck, which the drag replaces
            "feature_block": self.feature_block >= 1,
        })


CONFIG_CLASSES: dict[str, type[DragConfig]] = {"freedrag": FreeDragConfig, "fastdrag": FastDragConfig,
                                               "dragnoise": DragNoiseConfig}
"""Methods whose settings are a subclass of :class:`DragConfig`; every other method takes DragConfig."""


def config_class(method: str) -> type[DragConfig]:
    """The config dataclass ``method`` takes."""
    return CONFIG_CLASSES.get(method, DragConfig)


# Named presets: each method's own official defaults.
PRESETS: dict[str, DragConfig] = {
    "gooddrag": DragConfig(),
    "dragdiffusion": DragConfig(
        method="dragdiffusion",
        lora_steps=80,
        lora_batch_size=4,
        inversion_strength=0.7,
        drag_end_step=1,
        track_per_step=80,
        max_drag_per_track=1,
        max_track_no_change=0,
        lr=0.01,
        r1=1,
        r2=3,
        beta=1.0,
        lam=0.1,
        information_preserving=False,
        track_at_timestep_start=False,
        track_on_fresh_features=True,
        mutual_attention_while_dragging=True,
    ),
}


# Presets for the shipped shapes-64 model (64x64 images, 4x autoencoder, 16x16
# latents; see src/gooddrag/shapes/train.py). The spatial settings r1, r2 and
# beta are counted on the supervision grid, and what they do to the
# optimisation depends on their size in FEATURE cells: the loss reaches the
# latent through the feature map, which the grid samples bilinearly. SD's grid
# (256 for a 512 image) is 4x its 64x64 feature map; here the grid is the full
# 64 px image (sup_res_scale 1), again 4x the 16x16 feature map. So each
# method's official r1, r2 and beta keep their size in feature cells unchanged
# (GoodDrag: patch radius 1 cell, step 1 cell, tracking window 3 cells either
# side), and no value is rescaled. Measured on tuning cases (seed 100, 8 cases,
# not the benchmark's seeds): scaling them instead by the image's size (r1 1,
# r2 3, beta 1: a quarter cell per step) left every handle where it was
# (median 0.97 of the distance still to go, all stopped by max_track_no_change);
# the official values left 0.27. r2 6 and 12 tracked identically there.
# - resolution 64: the model's own size (it was trained on nothing else);
# - mutual_attention_start_layer 3: the UNet has 7 self-attention layers (2 down,
#   1 mid, 4 up); SD's mutual layers are its last 6 of 16, all in the decoder's
#   last two attention blocks; here layers 3..6 are the decoder's 4.
# - feature_block 2: output of up_blocks[1], the first decoder block at latent
#   resolution, as SD's index 3 is (up_blocks[2]).
# - stop_distance 1 (both methods; official 2): on tuning cases the tracked
#   handles came within 2 px of their targets while the objects themselves,
#   after denoising, still lagged 3-6 px of a 6-16 px drag; going on to 1 px
#   took GoodDrag's median remaining error from 0.37 to 0.15 of the distance
#   (seed 200, 12 cases, with max_track_no_change 10).
# - max_track_no_change 10 (GoodDrag): the authors' UI value (their benchmark
#   script uses 5); with 5, drags stalled for good after a few rounds without
#   progress (0.45 -> 0.37 on the same 12 cases).
# docs/benchmarks.md also reports the benchmark with the official values.
_SHAPES_SPATIAL = dict(resolution=64, sup_res_scale=1.0, feature_block=2, mutual_attention_start_layer=3,
                       stop_distance=1.0)
PRESETS["shapes-gooddrag"] = dataclasses.replace(PRESETS["gooddrag"], max_track_no_change=10, **_SHAPES_SPATIAL)
PRESETS["shapes-dragdiffusion"] = dataclasses.replace(PRESETS["dragdiffusion"], **_SHAPES_SPATIAL)

# FreeDrag: the UI values of the authors' code (FreeDragConfig's defaults name file:line). Its shapes-64
# preset is translated as the others are: d_max (5) and window_radius (4) are supervision cells, and the
# shapes grid is 4x its feature map as SD's is, so they keep their size in feature cells unchanged.
# l_expected is a feature distance, which depends on the model's features: tuned on shapes-64's tuning
# seeds (100 and 200, 2 x 4 cases: single, multi_point, multi_object, rotate; 2026-12-07). Median error /
# distance: 1.0 (the authors' value) 0.97 on seed 100's single case (the line search counts the pairs
# matched at once and the object stays), 0.4 0.70, 0.2 0.51, 0.1 0.35, 0.05 0.65-0.83 on the first three
# cases, 0.02 0.94 on the first (the budget runs out first).
PRESETS["freedrag"] = FreeDragConfig()
PRESETS["shapes-freedrag"] = dataclasses.replace(PRESETS["freedrag"], l_expected=0.1, **_SHAPES_SPATIAL)

# DragNoise: the benchmark's values of the authors' code (DragNoiseConfig's defaults name file:line; why
# the benchmark's and not the UI's: docs/method.md, "DragNoise"). Its shapes-64 preset translates the
# spatial settings as shapes-dragdiffusion does (r1 1, r2 3, beta 1 keep their size in feature cells),
# without the mutual-attention layer, which DragNoise does not read; the bottleneck is the mid block's
# output on any UNet. Nothing tuned on shapes-64.
_SHAPES_DRAGNOISE = {k: v for k, v in _SHAPES_SPATIAL.items() if k not in DragNoiseConfig.UNUSED}
PRESETS["dragnoise"] = DragNoiseConfig()
PRESETS["shapes-dragnoise"] = dataclasses.replace(PRESETS["dragnoise"], **_SHAPES_DRAGNOISE)

# FastDrag: its UI and benchmark values (FastDragConfig's defaults name file:line). Their UNet is the
# LCM-distilled one of SimianLuo/LCM_Dreamshaper_v7 (ui_utils.py:248-256), sampled with plain DDIM; the
# preset runs whatever UNet the model has, which on SD1.5 is their own non-LCM path (``use_lcm_unet=False``,
# ui_utils.py:257-263: SD1.5's UNet, the same 10-step DDIM). Its shapes-64 preset: the model's size and
# grid (sup_res_scale 1: 4 supervision cells per latent cell, as SD's 0.5 gives); the cached layers
# come from the UNet (its decoder's 4 of 7); nothing tuned.
PRESETS["fastdrag"] = FastDragConfig()
PRESETS["shapes-fastdrag"] = dataclasses.replace(PRESETS["fastdrag"], resolution=64, sup_res_scale=1.0)

# GoodDrag+ (ours): each faithful GoodDrag preset with the options of docs/method.md's "GoodDrag+"
# on; the values were chosen on the shapes benchmark's tuning seeds 100 and 200 (docs/benchmarks.md,
# "GoodDrag+"), never on the reported seeds 0 and 1.
# - warp_fill "noise": of keep / neighbours / noise, the best in the mask on both tuning seeds
#   (19.6 / 20.2 dB against 19.1 / 19.7 for neighbours and 18.6 / 18.5 for keep, warp alone);
# - stop_distance 0.25 (shapes only; the faithful shapes preset has 1): with sub-pixel tracking
#   the stop rule can ask for less than a cell; 1 stopped most drags at the first tracking after
#   the warp (0.09 of the distance on seed 100), 0.5 gave 0.09 / 0.07, 0.25 gave 0.07 / 0.07.
#   The SD and SDXL presets keep the authors' 2: not measured there (no GPU in this project yet).
# - image_warp with warp_field "affine" (2026-12-04, issue 32): the drag starts from the input warped
#   in pixel space, each mask region by the map its pairs fit; against the latent warp of the
#   translation blend (the option before) on 3 cases of each kind on seeds 100 / 200: turns IoU
#   0.93 / 0.93 (0.45 / 0.55), point error 0.10 / 0.16 (0.33 / 1.34); scales IoU 0.90 / 0.85 (0.73 /
#   0.57); stretches 0.90 / 0.93 (0.75 / 0.71); single moves 0.015 / 0.007 of the distance (0.055 /
#   0.074), in the mask 23.8 / 27.5 dB (18.0 / 20.0); the latent warp with the affine field, or the
#   image warp with the blend, did worse on turns, scales and stretches (docs/benchmarks.md).
# - image_warp_fill "behind" (the default): "around" (uncovered pixels grown in from around the mask)
#   was 0.0-1.3 dB worse in the mask on every kind of seed 200 and on 5 of 6 kinds of seed 100.
PLUS_OPTIONS = dict(method="gooddrag-plus", latent_warp=False, image_warp=True, warp_field="affine",
                    warp_fill="noise", subpixel_tracking=True)
PRESETS["gooddrag-plus"] = dataclasses.replace(PRESETS["gooddrag"], **PLUS_OPTIONS)
PRESETS["shapes-gooddrag-plus"] = dataclasses.replace(PRESETS["shapes-gooddrag"], stop_distance=0.25, **PLUS_OPTIONS)

# SDXL presets: each SD preset with SDXL's working size and the places of the method's layers in the
# SDXL base layout (gooddrag.models.sdxl's docstring says why each value; docs/sdxl.md).
_SDXL_SPATIAL = dict(feature_block=sdxl.SDXL_FEATURE_BLOCK,
                     mutual_attention_start_layer=sdxl.SDXL_MUTUAL_ATTENTION_START_LAYER)
PRESETS["gooddrag-sdxl"] = dataclasses.replace(PRESETS["gooddrag"], resolution=sdxl.SDXL_RESOLUTION, **_SDXL_SPATIAL)
PRESETS["dragdiffusion-sdxl"] = dataclasses.replace(
    PRESETS["dragdiffusion"], resolution=sdxl.SDXL_RESOLUTION, **_SDXL_SPATIAL)
PRESETS["gooddrag-sdxl-768"] = dataclasses.replace(
    PRESETS["gooddrag"], resolution=sdxl.SDXL_LIGHT_RESOLUTION, **_SDXL_SPATIAL)
PRESETS["dragdiffusion-sdxl-768"] = dataclasses.replace(
    PRESETS["dragdiffusion"], resolution=sdxl.SDXL_LIGHT_RESOLUTION, **_SDXL_SPATIAL)
PRESETS["gooddrag-plus-sdxl"] = dataclasses.replace(
    PRESETS["gooddrag-plus"], resolution=sdxl.SDXL_RESOLUTION, **_SDXL_SPATIAL)
PRESETS["gooddrag-plus-sdxl-768"] = dataclasses.replace(
    PRESETS["gooddrag-plus"], resolution=sdxl.SDXL_LIGHT_RESOLUTION, **_SDXL_SPATIAL)
# FreeDrag on SDXL is ours: the authors' code runs SD1.5 only (drag_ui.py:74-79); these presets are the
# SD one with SDXL's size and layer places, nothing tuned.
PRESETS["freedrag-sdxl"] = dataclasses.replace(PRESETS["freedrag"], resolution=sdxl.SDXL_RESOLUTION, **_SDXL_SPATIAL)
PRESETS["freedrag-sdxl-768"] = dataclasses.replace(
    PRESETS["freedrag"], resolution=sdxl.SDXL_LIGHT_RESOLUTION, **_SDXL_SPATIAL)
# DragNoise on SDXL is ours: the authors' code runs SD1.5 only (drag_ui.py:67-71; its UNet forward,
# drag_pipeline.py:14-222, has no SDXL conditioning); these are the SD preset with SDXL's size and
# feature block, nothing tuned. The bottleneck is SDXL's mid block (1/4 of the latent's side, SD1.5's 1/8).
PRESETS["dragnoise-sdxl"] = dataclasses.replace(
    PRESETS["dragnoise"], resolution=sdxl.SDXL_RESOLUTION, feature_block=sdxl.SDXL_FEATURE_BLOCK)
PRESETS["dragnoise-sdxl-768"] = dataclasses.replace(
    PRESETS["dragnoise"], resolution=sdxl.SDXL_LIGHT_RESOLUTION, feature_block=sdxl.SDXL_FEATURE_BLOCK)


# Flow-matching transformers (issue P5, docs/method.md "Flow-matching backbones"). GoodDrag's authors
# ran SD1.5/2.x only, so every value here that is not the SD preset's is ours:
# - resolution 1024: SD3.5's and FLUX.1's native size (their pipelines' default height and width);
# - inversion_strength: the same fraction of steps is much noisier on a shifted flow schedule than on
#   SD1.5's DDIM (docs/dit-plan.md 2.3: at 0.75 SD3's signal/noise is 0.108, SD1.5's 0.253); these
#   match SD1.5's signal/noise at its 0.75 (SD3, shift 3: 0.58 -> 0.6; FLUX.1 at 1024 px, mu 1.15:
#   0.56 -> 0.55). Not measured on real weights (no GPU run yet);
# - feature_block / mutual_attention_start_layer: gooddrag.models.backbone's transformer rule on the
#   reference layouts (SD3.5-medium: 24 joint blocks, 37 attention layers with its 13 ``attn2``;
#   FLUX.1: 19 double blocks + 38 single = 57 layers). Another layout (SD3.5-large's 38 blocks) is
#   refused if a value falls outside it (--feature-block and --mutual-attention-start-layer place them).
SD35_MEDIUM_STRUCTURE = dict(feature_block=12, mutual_attention_start_layer=23)  # round(0.5 x 23); 37 - round(37 x 6/16)
FLUX1_STRUCTURE = dict(feature_block=9, mutual_attention_start_layer=36)  # round(0.5 x 18); 57 - round(57 x 6/16)
_SD3 = dict(resolution=1024, inversion_strength=0.6, **SD35_MEDIUM_STRUCTURE)
_FLUX = dict(resolution=1024, inversion_strength=0.55, **FLUX1_STRUCTURE)
for _name, _family in (("sd3", _SD3), ("flux", _FLUX)):
    PRESETS[f"gooddrag-{_name}"] = dataclasses.replace(PRESETS["gooddrag"], **_family)
    PRESETS[f"dragdiffusion-{_name}"] = dataclasses.replace(PRESETS["dragdiffusion"], **_family)
    PRESETS[f"gooddrag-plus-{_name}"] = dataclasses.replace(PRESETS["gooddrag-plus"], **_family)

# shapes-dit-64 (src/gooddrag/shapes/train_dit.py: 64 px, 16x16x8 latents in 2x2 patches, an 8x8 token
# grid, 8 joint blocks, no T5): the shapes-64 presets with text_tokens 8 (the T5 slots it was trained
# with) and the layers by the transformer rule (feature block 4 of 0..7, mutual attention in layers
# 5..7). Tuned on seeds 100 and 200 (2 x 7 cases: 4 translations, one of each deformation; GoodDrag's
# median error / distance): feature_block 2 0.71, 4 0.65, 6 0.66 with a 32x32 grid (sup_res_scale 0.5,
# 4 cells a token, SD's ratio); the 64x64 grid (1.0, 8 cells a token) with block 4: 0.37 (success 29%
# against 14%), hence 1.0 (docs/benchmarks.md, "shapes-dit-64").
SHAPES_DIT_SPATIAL = dict(resolution=64, sup_res_scale=1.0, text_tokens=8, stop_distance=1.0, feature_block=4,
                          mutual_attention_start_layer=5)
PRESETS["shapes-dit-gooddrag"] = dataclasses.replace(PRESETS["gooddrag"], max_track_no_change=10,
                                                     **SHAPES_DIT_SPATIAL)
PRESETS["shapes-dit-dragdiffusion"] = dataclasses.replace(PRESETS["dragdiffusion"], **SHAPES_DIT_SPATIAL)
PRESETS["shapes-dit-gooddrag-plus"] = dataclasses.replace(PRESETS["shapes-dit-gooddrag"], stop_distance=0.25,
                                                          **PLUS_OPTIONS)

def get_preset(name: str, **overrides: Any) -> DragConfig:
    """Return preset ``name`` with ``overrides`` applied (unknown names are an error)."""
    if name not in PRESETS:
        raise GoodDragError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise GoodDragError(f"unknown setting(s): {', '.join(unknown)}")
    return dataclasses.replace(base, **overrides)


__all__ = ["DragConfig", "FreeDragConfig", "FastDragConfig", "DragNoiseConfig", "CONFIG_CLASSES", "config_class", "PRESETS", "METHODS", "get_preset"]
