"""The simulator behind ``gooddrag bench estimate``: a whole edit at real size, with no weights.

:func:`estimate` builds the model from its configs on fake tensors (:mod:`.estimate_models`) and
runs :class:`gooddrag.DragPipeline` itself on it, its ``__call__`` from the inputs' check to the
decoded picture, under :class:`.estimate_counters.Counters`. Only the data-dependent reads get
stand-in values, through the pipeline's public hooks: the tracker (``DragHooks.track``) runs and its
answer is replaced by the handles it was given (a real tensor: the stop rules then read values),
and ``DragHooks.host_read`` answers the LoRA's losses with zeros. The early stops are off
(``stop_distance`` 0, ``max_track_no_change`` 0, ``drag_loss_threshold`` 0), so the schedule is the
preset's whole budget, as in ``research/speed.py``.

A full schedule is hundreds of UNet calls (GoodDrag at 512 px: 70 LoRA steps at batch 4, 38
inversion steps, 7 x 10 x 3 drag steps, 38 denoising steps at batch 2), minutes each on fake
tensors at SDXL's size; so the pipeline runs four SHORT schedules (:data:`RUNS`) and the full one is
extrapolated. The operators and FLOPs of each phase are linear in the counts of the schedule
(:data:`COST_TERMS`: LoRA steps L; inversion steps I; drag timesteps T, tracking rounds per
timestep R, optimiser steps per round S; the denoising steps are I, of which T without mutual
self-attention in GoodDrag), fitted exactly from the short runs. A phase's peak memory is the
largest over the runs plus what grows with the schedule (:data:`MEMORY_GROWTH`: the LoRA's noise,
drawn for every step before the loop; the reference trajectory's tensors, one set a drag timestep).
tests/test_estimate.py checks both against full runs on the tiny model, operator for operator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core import geometry
from ..errors import GoodDragError
from ..methods import aidd, presets, registry
from ..methods.base import DragHooks, read_to_host
from ..methods.base import track as default_track
from ..methods.config import DragConfig, get_preset
from ..methods.pipeline import DragPipeline
from ..models import backbone
from .estimate_counters import CUDA_BLOCK, Counters, PhaseFigures, total
from .estimate_models import (
    HOST_STAND_IN,
    build_fake_pipeline,
    fake_mode,
    fake_new_parameters,
    is_fake,
    parameter_count,
)

logger = logging.getLogger(__name__)

PHASES = ("other", "lora", "inversion", "drag", "denoise", "decode")
"""``other``: what runs outside the named phases (the inputs' check, the prompt's encoding, the
LoRA's removal after the method, the result); ``lora``: training (with the VAE
encode it needs) and fusing; ``inversion``: VAE encode and DDIM inversion; ``drag``: the reference
trajectory and the drag timesteps (optimiser steps, tracking); ``denoise``: the batched DDIM steps;
``decode``: the VAE decode."""
EARLY_STOPS_OFF = dict(stop_distance=0.0, max_track_no_change=0, drag_loss_threshold=0.0)
METHODS = tuple(name for name, m in registry.METHODS.items() if m.run is aidd.drag_and_denoise)
"""The methods the simulator runs: AIDD's (a FreeDrag edit's line search decides its own schedule)."""


@dataclass(frozen=True)
class Schedule:
    """The counts an edit's cost is linear in (module docstring)."""

    L: int  # LoRA steps
    I: int  # noqa: E741 - inversion steps (= denoising steps)
    T: int  # drag timesteps
    R: int  # tracking rounds per drag timestep
    S: int  # optimiser steps per round

    @classmethod
    def of(cls, config: DragConfig) -> "Schedule":
        return cls(config.lora_steps, config.inversion_steps, config.drag_end_step, config.track_per_step,
                   config.max_drag_per_track)

    def config(self, base: DragConfig) -> DragConfig:
        """``base`` running this schedule (every other setting kept; early stops off)."""
        return dataclasses.replace(base, lora_steps=self.L, num_inference_steps=self.I, inversion_strength=1.0,
                                   drag_end_step=self.T, track_per_step=self.R, max_drag_per_track=self.S,
                                   **EARLY_STOPS_OFF)

    def terms(self, phase: str) -> list[float]:
        """The phase's cost terms (:data:`COST_TERMS`) for these counts, after the constant 1."""
        values = {"L": self.L, "I": self.I, "T": self.T, "TR": self.T * self.R, "TRS": self.T * self.R * self.S}
        return [1.0] + [float(values[t]) for t in COST_TERMS[phase]]


COST_TERMS = {"other": (), "lora": ("L",), "inversion": ("I",), "drag": ("T", "TR", "TRS"),
              "denoise": ("T", "I"), "decode": ()}
"""What each phase's operators and FLOPs are linear in (besides a constant)."""
MEMORY_GROWTH = {"lora": "L", "drag": "T", "denoise": "T"}
"""The count along which a phase's live memory grows (the LoRA's noise: one draw a step, all made
before the loop; the reference trajectory: one set a drag timestep, kept to the end)."""
GROWTH_MEASURED = {"L": ("lora", (0, 1)), "T": ("denoise", (0, 2))}
"""Where each growth is measured: the phase, and the two runs (indices into :data:`RUNS`) that
differ in that count only as far as memory goes; what the phase added to the live bytes by its
first UNet call (the LoRA's first step; the first batched DDIM step, after the reference
trajectory) differs by the growth alone, where the peaks also differ by what a first step lacks
(Adam's state)."""
RUNS = (Schedule(1, 1, 1, 1, 1), Schedule(2, 2, 1, 1, 2), Schedule(0, 2, 2, 1, 1), Schedule(0, 2, 2, 2, 1))
"""The short schedules run: each count takes two values, each phase's terms are independent over
the runs that inform it, and one run has a second drag timestep AND a second round (what each
adds to the live memory once, both in a full schedule). Runs 3 and 4 have no LoRA: a fused LoRA
costs the later phases no operator (the base layers run), only memory (its weights and the
backup of the weights it changed), which :func:`_peak` adds back."""


def unet_calls(schedule: Schedule, config: DragConfig, micro_batches: int) -> int:
    """UNet forward passes in an edit: LoRA (one a micro-batch), inversion (twice with
    ``image_warp``), the reference trajectory, one per optimiser step, the denoising."""
    lora = schedule.L * micro_batches
    inversion = schedule.I * (2 if config.image_warp else 1)
    return lora + inversion + schedule.T + schedule.T * schedule.R * schedule.S + schedule.I


def make_inputs(size: int) -> tuple[Image.Image, list[float], list[float], np.ndarray]:
    """A square picture, one handle 3/16 of the side left of its target, a mask over the middle
    (as ``research/speed.py``); the picture's content costs nothing."""
    image = Image.new("RGB", (size, size), (120, 130, 140))
    mask = np.zeros((size, size), bool)
    mask[size // 5: size * 4 // 5, size // 6: size * 5 // 6] = True
    return image, [size * 0.375, size * 0.5], [size * 0.5625, size * 0.5], mask


def stand_in_track(features: torch.Tensor, reference_vectors: torch.Tensor, handles: torch.Tensor,
                   config: DragConfig) -> torch.Tensor:
    """The tracker runs (its cost counts); its answer, which needs values, is the handles it was
    given, as real numbers: handles (N, 2) (row, col) supervision cells."""
    default_track(features, reference_vectors, handles, config)
    return handles.clone() if not is_fake(handles) else torch.zeros(handles.shape, dtype=handles.dtype)


def stand_in_read(values: torch.Tensor) -> Any:
    """A host read: real values as they are, fake ones as zeros of their shape (not reached, not
    moved; LoRA losses 0)."""
    if is_fake(values):
        return torch.zeros(values.shape, dtype=values.dtype).tolist()
    return read_to_host(values)


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """diffusers' warnings that do not apply here (fp16 "on the CPU", casting the VAE with ``to``)."""
    from diffusers.utils import logging as dlog  # diffusers' own verbosity switch

    before = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(before)


def as_on_cuda(pipe: DragPipeline) -> None:
    """The settings a CUDA pipeline has (``DragPipeline.__init__``): fused Adam, channels_last (a
    UNet's; a transformer stays as it is), the text encoders on the host, which is
    :data:`HOST_STAND_IN` here."""
    pipe.fused_adam = True
    if not pipe.denoiser.flow:
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.offload_device = HOST_STAND_IN
    for module in backbone.text_encoders(pipe.sd):
        module.to(pipe.offload_device if pipe.offload_text_encoders else pipe.device)


def device_tensors(pipe: DragPipeline) -> Iterator[torch.Tensor]:
    """Every parameter and buffer of the pipeline's models (the weights live before an edit)."""
    for module in (pipe.unet, pipe.vae, *backbone.text_encoders(pipe.sd)):
        yield from module.parameters()
        yield from module.buffers()


def run_once(pipe: DragPipeline, config: DragConfig, on_call: Callable[[], None] | None = None,
             round_to: int = CUDA_BLOCK) -> dict[str, PhaseFigures]:
    """One edit of ``config`` on ``pipe`` (fake or real), counted (``round_to``: allocation
    granularity in bytes); returns the figures per phase."""
    counters = Counters(round_to=round_to)
    pipe.hooks = DragHooks(track=stand_in_track, host_read=stand_in_read, phase=counters.phase)
    pipe.cache_lora = False  # each run trains its own LoRA (fake weights have nothing to write)
    image, handle, target, mask = make_inputs(config.resolution)
    mode = getattr(next(pipe.unet.parameters()), "fake_mode", None)  # None: a real model

    def called(*_) -> None:
        counters.unet_call()
        if on_call is not None:
            on_call()

    hook = pipe.unet.register_forward_pre_hook(called)
    gc.collect()  # what earlier runs left in reference cycles goes now, not at some point inside this one
    try:
        with counters, fake_new_parameters(mode) if mode is not None else contextlib.nullcontext():
            counters.track_existing(device_tensors(pipe))
            pipe(image, [handle], [target], mask, config=config, progress=False)
    finally:
        hook.remove()
    return counters.finish()


def _fit(rows: list[tuple[list[float], float]], terms: list[float]) -> float:
    """Least squares (exact here: the runs are chosen so) of a value linear in the terms; the value
    at ``terms``."""
    a = np.array([r[0] for r in rows], dtype=np.float64)
    b = np.array([r[1] for r in rows], dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(np.dot(coef, terms))


TRAINING_RUNS = (0, 1)
"""The runs that train a LoRA."""
WITH_LORA = ("other", "lora")
"""The phases fitted on :data:`TRAINING_RUNS` only: the LoRA's training, and its removal (in
``other``: unfusing writes the backup back)."""


def extrapolate(runs: list[dict[str, PhaseFigures]], full: Schedule) -> dict[str, PhaseFigures]:
    """The full schedule's figures per phase from the short runs' (module docstring)."""
    out: dict[str, PhaseFigures] = {}
    for phase in PHASES:
        informing = list(TRAINING_RUNS) if phase in WITH_LORA else list(range(len(RUNS)))
        figs = [(RUNS[i], runs[i].get(phase, PhaseFigures())) for i in informing]
        ops = _fit([(s.terms(phase), f.ops) for s, f in figs], full.terms(phase))
        flops = _fit([(s.terms(phase), f.flops) for s, f in figs], full.terms(phase))
        out[phase] = PhaseFigures(ops=round(ops), flops=round(flops), peak_bytes=_peak(phase, runs, informing, full))
    return out


AFTER_LORA = ("inversion", "drag", "denoise")
"""Phases that hold what the LoRA phase left (the fused LoRA and the backup of the weights it
changed, until the LoRA is removed before decoding): the peaks of the runs without a LoRA are
taken relative to that."""


def _peak(phase: str, runs: list[dict[str, PhaseFigures]], informing: list[int], full: Schedule) -> int:
    """The largest peak over the runs, each moved to the full schedule along the phase's growing
    count and, after the LoRA, to a trained LoRA's baseline (:data:`AFTER_LORA`). A run with two
    drag timesteps holds a latent or two more than a schedule with one (DragDiffusion's) ever does:
    kilobytes, left in."""
    peaks = {i: runs[i].get(phase, PhaseFigures()).peak_bytes for i in informing}
    if phase in AFTER_LORA:
        base = runs[TRAINING_RUNS[0]]["inversion"].start_bytes
        peaks = {i: p - (runs[i]["inversion"].start_bytes - base) for i, p in peaks.items()}
    count = MEMORY_GROWTH.get(phase)
    if count is None:
        return max(peaks.values())
    slope = growth(runs, count)
    return max(round(p + slope * (getattr(full, count) - getattr(RUNS[i], count))) for i, p in peaks.items())


def growth(runs: list[dict[str, PhaseFigures]], count: str) -> float:
    """Device bytes that stay live per unit of ``count`` (:data:`GROWTH_MEASURED`), at least 0."""
    phase, (lo, hi) = GROWTH_MEASURED[count]
    a, b = runs[lo][phase], runs[hi][phase]
    if a.first_call_bytes is None or b.first_call_bytes is None:
        return 0.0
    grown = (b.first_call_bytes - b.start_bytes) - (a.first_call_bytes - a.start_bytes)
    return max(0.0, grown / (getattr(RUNS[hi], count) - getattr(RUNS[lo], count)))


def micro_batch(pipe: DragPipeline, config: DragConfig) -> int:
    """Images per LoRA forward pass for ``make_inputs``' square picture (``DragPipeline.lora_micro_batch``)."""
    return min(pipe.lora_images_per_pass(working_side(pipe, config) ** 2), config.lora_batch_size)


def micro_batches(pipe: DragPipeline, config: DragConfig) -> int:
    """Forward passes per LoRA step."""
    return -(-config.lora_batch_size // micro_batch(pipe, config))


def simulate(pipe: DragPipeline, base: DragConfig, progress: bool = True,
             round_to: int = CUDA_BLOCK) -> dict[str, Any]:
    """Run the short schedules of ``base`` on ``pipe`` and extrapolate to ``base``'s own; returns
    ``{"phases": {phase: PhaseFigures}, "runs": [per run {phase: PhaseFigures}], "schedule": Schedule}``."""
    full = Schedule.of(base)
    calls = sum(unet_calls(s, base, micro_batches(pipe, base)) for s in RUNS)
    bar = tqdm(total=calls, desc="simulated UNet calls", unit="call", disable=not progress)
    figures = []
    try:
        for schedule in RUNS:
            figures.append(run_once(pipe, schedule.config(base), lambda: bar.update(1), round_to))
            logger.info("short run %s: %s", schedule, {k: round(v.seconds, 1) for k, v in figures[-1].items()})
    finally:
        bar.close()
    return {"phases": extrapolate(figures, full), "runs": figures, "schedule": full}


def measure(pipe: DragPipeline, config: DragConfig, round_to: int = CUDA_BLOCK) -> dict[str, PhaseFigures]:
    """The same counters on ONE edit of ``config`` as it is (no extrapolation): what the tests
    compare the extrapolation with, on real or fake models."""
    return run_once(pipe, config, round_to=round_to)


# --------------------------------------------------------------------------------------- the estimate
H100_BF16_DENSE_FLOPS = 989e12
"""An H100 SXM's dense bf16 tensor-core peak, FLOP/s: the floor below which no edit can run there."""
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Request:
    """What ``gooddrag bench estimate`` is asked: an architecture (``sd15``, ``sd21``, ``sdxl``,
    ``sd35-medium``, ``flux1-dev`` or a diffusers folder), a working resolution, a method (its preset
    for the backbone), a dtype, ``--low-memory``, a LoRA batch size (the preset's when None) and a
    LoRA micro-batch (the pipeline's default when None)."""

    model: str = "sd15"
    resolution: int | None = None
    method: str = "gooddrag"
    dtype: str = "fp16"
    low_memory: bool = False
    lora_batch_size: int | None = None
    lora_micro_batch: int | None = None
    offload_text_encoders: bool = True
    """``DragPipeline.offload_text_encoders`` (False: what the pipeline did before; to measure the cut)."""
    target: str = "cuda"
    """``cuda``: the pipeline as on a CUDA device (fused Adam, channels_last, text encoders and the
    low-memory LoRA backup on the host, 512-byte blocks); ``cpu``: as on the CPU (one memory, exact
    bytes), what the estimates are checked against."""


def model_configs(model: str) -> dict[str, Any]:
    from .estimate_models import BUILTIN, builtin_configs, folder_configs  # the builders' config tables

    return builtin_configs(model) if model in BUILTIN else folder_configs(model)


def request_config(request: Request, kind: str) -> DragConfig:
    """The method's preset for the backbone, at the asked resolution and LoRA batch, early stops off."""
    if request.method not in METHODS:
        raise GoodDragError(f"the estimator runs {', '.join(METHODS)}; not {request.method!r} "
                            "(FreeDrag's line search decides its own schedule)")
    base = get_preset(presets.for_model(request.method, None, kind))
    overrides: dict[str, Any] = dict(EARLY_STOPS_OFF)
    if request.resolution is not None:
        overrides["resolution"] = request.resolution
    if request.lora_batch_size is not None:
        overrides["lora_batch_size"] = request.lora_batch_size
    return dataclasses.replace(base, **overrides)


def fake_drag_pipeline(request: Request) -> DragPipeline:
    """The request's model on fake tensors, wrapped in a :class:`DragPipeline` set as on CUDA."""
    if request.dtype not in DTYPES:
        raise GoodDragError(f"unknown dtype {request.dtype!r}; choose one of {', '.join(DTYPES)}")
    with quiet_diffusers():
        sd = build_fake_pipeline(model_configs(request.model), DTYPES[request.dtype], fake_mode())
        pipe = DragPipeline(sd, device="cpu")
        pipe.offload_text_encoders = request.offload_text_encoders
        if request.target == "cuda":
            as_on_cuda(pipe)
        if request.low_memory:
            pipe.enable_low_memory()
        if request.lora_micro_batch is not None:
            pipe.lora_micro_batch = request.lora_micro_batch
    return pipe


def estimate(request: Request, progress: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Simulate the request's whole edit, the short runs in ``jobs`` processes; returns the report
    (:func:`report`)."""
    start = time.perf_counter()
    pipe = fake_drag_pipeline(request)
    config = request_config(request, pipe.kind)
    round_to = CUDA_BLOCK if request.target == "cuda" else 1
    if jobs <= 1:
        with quiet_diffusers():
            sim = simulate(pipe, config, progress=progress, round_to=round_to)
    else:
        passes = micro_batches(pipe, config)
        total = sum(unet_calls(s, config, passes) for s in RUNS)
        with tqdm(total=total, desc="simulated UNet calls", unit="call", disable=not progress) as bar:
            runs = run_in_processes(request, split_runs(jobs, passes), bar)
        sim = {"phases": extrapolate(runs, Schedule.of(config)), "runs": runs, "schedule": Schedule.of(config)}
    return report(request, pipe, config, sim, time.perf_counter() - start)


def split_runs(jobs: int, lora_passes: int = 1) -> list[list[int]]:
    """The short runs (indices into :data:`RUNS`) for each of ``jobs`` processes, longest first onto
    the least loaded; a run weighs its UNet calls, a LoRA pass (of ``lora_passes`` a step: it
    trains through the unfused LoRA) twice a drag step."""
    def weight(s: Schedule) -> int:
        return 6 * s.L * lora_passes + 3 * s.T * s.R * s.S + s.T + 2 * s.I

    parts: list[list[int]] = [[] for _ in range(min(jobs, len(RUNS)))]
    loads = [0] * len(parts)
    for i in sorted(range(len(RUNS)), key=lambda i: -weight(RUNS[i])):
        k = loads.index(min(loads))
        parts[k].append(i)
        loads[k] += weight(RUNS[i])
    return parts


def _worker(request: Request, indices: list[int], calls) -> list[tuple[int, dict[str, PhaseFigures]]]:
    """A worker process: the request's fake pipeline and the short runs ``indices``; each UNet call
    is reported on the queue ``calls``."""
    torch.set_num_threads(1)
    pipe = fake_drag_pipeline(request)
    base = request_config(request, pipe.kind)
    round_to = CUDA_BLOCK if request.target == "cuda" else 1
    with quiet_diffusers():
        return [(i, run_once(pipe, RUNS[i].config(base), lambda: calls.put(1), round_to)) for i in indices]


def run_in_processes(request: Request, parts: list[list[int]], bar) -> list[dict[str, PhaseFigures]]:
    """The short runs of ``request``, ``parts`` (:func:`split_runs`) in as many worker processes
    (each builds its own fake model); ``bar`` counts the UNet calls. Returns the runs' figures in
    the order of :data:`RUNS`."""
    context = multiprocessing.get_context("spawn")  # fork after torch's threads start is unsafe
    with context.Manager() as manager, ProcessPoolExecutor(len(parts), mp_context=context) as pool:
        calls = manager.Queue()
        futures = [pool.submit(_worker, request, part, calls) for part in parts]
        while not all(f.done() for f in futures):
            with contextlib.suppress(queue.Empty):
                calls.get(timeout=0.2)
                bar.update(1)
        figures = dict(item for f in futures for item in f.result())
    return [figures[i] for i in range(len(RUNS))]


def report(request: Request, pipe: DragPipeline, config: DragConfig, sim: dict[str, Any], seconds: float) -> dict:
    """The JSON report: totals, per phase, the schedule, the weights, the floor, the runs."""
    phases, whole = sim["phases"], total(sim["phases"])
    schedule: Schedule = sim["schedule"]
    return {
        "simulated": True,
        "model": request.model, "backbone": pipe.kind, "method": request.method, "preset_settings": config.to_dict(),
        "resolution": config.resolution, "working_size": working_side(pipe, config),
        "dtype": request.dtype, "low_memory": request.low_memory,
        "target": request.target,
        "lora_batch_size": config.lora_batch_size, "lora_micro_batch": micro_batch(pipe, config),
        "text_encoders_offloaded": pipe.offload_text_encoders,
        "peak_bytes": whole.peak_bytes, "flops": whole.flops, "ops": whole.ops,
        "phases": {k: phases[k].to_dict() for k in PHASES},
        "peak_phase": max(PHASES, key=lambda k: phases[k].peak_bytes),
        "schedule": dataclasses.asdict(schedule) | {"unet_calls": unet_calls(schedule, config, micro_batches(pipe, config))},
        "parameters": {name: parameter_count(m) for name, m in _models(pipe).items()},
        "h100_bf16_floor_seconds": whole.flops / H100_BF16_DENSE_FLOPS,
        "short_runs": [{"schedule": dataclasses.asdict(s), "phases": {k: v.to_dict() for k, v in r.items()}}
                       for s, r in zip(RUNS, sim["runs"])],
        "wall_seconds": seconds,
    }


def working_side(pipe: DragPipeline, config: DragConfig) -> int:
    """The side the edit of a square picture works at: the resolution rounded to the model's size
    multiple (``DragPipeline.working_size``), e.g. 500 -> 512 for SD."""
    return geometry.working_size(config.resolution, config.resolution, config.resolution, pipe.size_multiple)[0]


def _models(pipe: DragPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's models by their component names (``unet`` or ``transformer``, ``vae``, the text encoders)."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    encoders = {n: getattr(pipe.sd, n) for n in names if getattr(pipe.sd, n, None) is not None}
    return {"transformer" if pipe.denoiser.flow else "unet": pipe.unet, "vae": pipe.vae, **encoders}
