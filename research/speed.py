"""Speed and memory of one full GoodDrag edit (issue 6).

Builds Stable Diffusion 1.5's UNet, VAE and text encoder from their published
configs with random weights (nothing is downloaded; the tokenizer is a local
character-level one, as in :mod:`gooddrag.models.tiny`), wraps them in
:class:`gooddrag.DragPipeline` and runs GoodDrag's default schedule at 512x512
with the early stops off, so the work is fixed: LoRA 70 steps at batch 4,
inversion 38 steps, 7 drag timesteps x 10 tracking rounds x 3 optimiser steps,
denoising 38 steps with the source branch in the same batch, VAE encode and
decode. It prints seconds and peak GPU memory (``torch.cuda.max_memory_allocated``,
reset at each phase boundary) per phase and in total, for

- ``default``: our path (fp16 weights on CUDA, LoRA fused into the weights,
  fused Adam, channels_last, no host syncs in the loops but one per tracking
  round);
- ``reference`` (``--reference``): the same schedule the plain way: fp32
  weights, the LoRA as separate layers, for-each Adam, contiguous tensors, a
  host read of the loss after every optimiser step and point tracking on the
  CPU (:class:`ReferencePipeline`); the speed-up is ``reference total /
  default total`` from the same run;
- ``low_memory`` (``--low-memory``): the default path after
  :meth:`DragPipeline.enable_low_memory`.

Each path builds its own copy of the model (same seed, so the same weights),
runs a warm-up edit on a short schedule (CUDA; ``--no-warmup`` to skip) and
then the timed edit, and frees the model before the next path, so each peak
is that path's alone. Seconds per phase come from ``DragResult.timings``
(``inversion`` includes the VAE encode, also shown alone as ``encode``;
``other`` is prompt encoding and input preparation); ``rest`` is everything
but the LoRA.

``--model tiny`` runs the same on the tiny random model of
:mod:`gooddrag.models.tiny` (CPU, for CI; ``--schedule short`` makes it seconds).
The full-size model is refused on the CPU. ``--json OUT`` writes every figure.

``--count-ops`` instead counts the aten operators dispatched by one UNet call
(forward, and forward + backward to the latent as in the drag) without the
LoRA, with it as separate layers and with it fused, on the meta device (no
memory, no arithmetic, any machine): a device-independent proxy for the
kernel launches that bound a batch-1 UNet call on a fast GPU.

    python research/speed.py --reference --low-memory --json speed.json        # GPU
    python research/speed.py --model tiny --schedule short --reference --json x.json  # CPU
    python research/speed.py --count-ops                                        # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gooddrag import DragPipeline, get_preset  # noqa: E402
from gooddrag.core.ddim import SD15_SCHEDULER_CONFIG  # noqa: E402
from gooddrag.core.geometry import vae_scale_factor  # noqa: E402
from gooddrag.methods.base import DragHooks, motion_loss, track  # noqa: E402
from gooddrag.models import lora  # noqa: E402

# --------------------------------------------------------------------------- model
# Stable Diffusion 1.5's published configs (unet/, vae/, text_encoder/ config.json).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    # ids of the local tokenizer's start/end tokens (the real vocabulary cannot be downloaded)
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)


def build_sd15(device: torch.device, seed: int = 0):
    """SD1.5-sized ``StableDiffusionPipeline`` with random (seeded) fp32 weights, built on ``device``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from gooddrag.models.tiny import tiny_vocab

    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    with torch.no_grad():  # as gooddrag.models.tiny does: keeps a random UNet's DDIM trajectory tame (and fp16 finite)
        unet.conv_out.weight.mul_(0.02)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, unet=unet, scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG),
        tokenizer=CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=77),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    if name == "sd15":
        sd = build_sd15(device, seed)
    else:
        from gooddrag.models.tiny import make_tiny_pipeline

        sd = make_tiny_pipeline(seed)
    return sd.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------ schedules
# Early stops off (stop_distance 0, max_track_no_change 0): every path does the same work.
FIXED_WORK = dict(stop_distance=0.0, max_track_no_change=0)
SCHEDULES = {
    # GoodDrag's defaults: LoRA 70 x batch 4, 38 of 50 DDIM steps, 7 x 10 x 3 drag steps
    "full": {},
    # seconds on a CPU with the tiny model (CI), and the warm-up
    "short": dict(lora_steps=2, lora_batch_size=2, num_inference_steps=10, drag_end_step=2, track_per_step=2,
                  max_drag_per_track=2),
}
# Spatial settings for the tiny model's 128-px working size (as tests/helpers.py TINY).
TINY_SPATIAL = dict(r1=2, r2=4, beta=2.0, mutual_attention_start_layer=7)


def make_config(model: str, schedule: str, resolution: int):
    spatial = TINY_SPATIAL if model == "tiny" else {}
    return get_preset("gooddrag", resolution=resolution, **FIXED_WORK, **spatial, **SCHEDULES[schedule])


def make_inputs(size: int):
    """A square test image (gradient + disc), one handle 3/16 of the side left of
    its target, a mask over the middle; all in pixels of the ``size`` image."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx / size * 200, yy / size * 200, np.full_like(xx, 80.0)], -1)
    disc = (yy - size * 0.5) ** 2 + (xx - size * 0.4) ** 2 < (size * 0.15) ** 2
    img[disc] = [250, 220, 40]
    img += np.random.default_rng(0).normal(0, 3, img.shape)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    mask = np.zeros((size, size), bool)
    mask[size // 5: size * 4 // 5, size // 6: size * 5 // 6] = True
    handle, target = [size * 0.375, size * 0.5], [size * 0.5625, size * 0.5]
    return image, [handle], [target], mask


# ------------------------------------------------------------------------ pipelines
class MeasuredPipeline(DragPipeline):
    """:class:`DragPipeline` that also records the peak GPU memory of each phase
    (reset at every phase boundary, so a phase's peak is its own; it includes
    what earlier phases left allocated, e.g. the weights) and the VAE-encode
    seconds (inside the pipeline's ``inversion``). Behaviour is unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peaks: dict[str, int] = {}
        self.encode_seconds = 0.0
        self._phases = ["other"]
        self.hooks = DragHooks(phase=self.phase)  # the pipeline marks lora / inversion / denoise / drag / decode

    def _flush_peak(self) -> None:
        if self.device.type == "cuda":
            phase = self._phases[-1]
            self.peaks[phase] = max(self.peaks.get(phase, 0), torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._flush_peak()
        self._phases.append(name)
        try:
            yield
        finally:
            self._flush_peak()
            self._phases.pop()

    @property
    def current_phase(self) -> str:
        return self._phases[-1]

    def encode_image(self, image):  # a public method: the VAE-encode seconds inside "inversion"
        with self.phase("inversion"):
            self._sync()
            t0 = time.perf_counter()
            out = super().encode_image(image)
            self._sync()
            self.encode_seconds += time.perf_counter() - t0
            return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class ReferencePipeline(MeasuredPipeline):
    """The same schedule the plain way: fp32 weights (chosen by the caller), the
    LoRA kept as separate layers, for-each Adam, contiguous tensors, a host read
    of the drag loss after every optimiser step (a sync; the authors' code
    prints it) and point tracking on the CPU. Not a copy of the authors' code:
    theirs runs the fp32 weights under fp16 autocast in the drag (accelerate's
    mixed precision) and also copies reference tensors to the GPU and empties
    the CUDA cache every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fuse_lora = False
        self.fused_adam = False
        self.unet.to(memory_format=torch.contiguous_format)
        self.hooks = DragHooks(track=track_on_cpu, motion_loss=loss_read_every_step, phase=self.phase)


def loss_read_every_step(*args):
    loss = motion_loss(*args)
    loss.item()  # the authors read (print) the loss every step
    return loss


def track_on_cpu(features, ref_vectors, handles, config):
    return track(features.cpu(), ref_vectors.cpu(), handles.cpu(), config).to(handles.device)


PATHS = ("default", "reference", "low_memory")
ABLATIONS = ("fuse_lora", "fused_adam", "channels_last")
PHASES = ("lora", "encode", "inversion", "drag", "denoise", "decode", "other", "total", "rest")
PEAK_PHASES = ("lora", "inversion", "drag", "denoise", "decode", "other", "total")
GB = 1e9


def make_pipeline(path: str, args, device: torch.device, dtype: torch.dtype) -> MeasuredPipeline:
    if path == "reference":
        return ReferencePipeline(build_model(args.model, device, torch.float32, args.seed), device=device)
    pipe = MeasuredPipeline(build_model(args.model, device, dtype, args.seed), device=device)
    for feature in args.disable:  # ablations: which feature buys what
        if feature == "channels_last":
            pipe.unet.to(memory_format=torch.contiguous_format)
        else:
            setattr(pipe, feature, False)
    if path == "low_memory":
        pipe.enable_low_memory(attention_slicing=args.attention_slicing)
    return pipe


def run_path(path: str, args, device: torch.device, dtype: torch.dtype) -> tuple[dict, np.ndarray]:
    """Build the path's pipeline, warm it up, time one edit; returns (figures, image)."""
    cuda = device.type == "cuda"
    pipe = make_pipeline(path, args, device, dtype)
    image, handles, targets, mask = make_inputs(args.resolution)
    with tempfile.TemporaryDirectory(prefix="gooddrag-speed-") as tmp:
        if args.warmup:  # kernels, cuDNN/cuBLAS handles, allocator pools
            pipe(image, handles, targets, mask, config=make_config(args.model, "short", args.resolution),
                 lora_cache_dir=Path(tmp) / "warmup", progress=False)
        pipe.peaks.clear()
        pipe.encode_seconds = 0.0
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(args.seed)  # peft draws the LoRA's initial A matrices from the global RNG
        syncs: list[tuple[str, str]] = []
        with _sync_debug(pipe, syncs, enabled=cuda and args.sync_debug and path == "default"):
            res = pipe(image, handles, targets, mask, config=make_config(args.model, args.schedule, args.resolution),
                       lora_cache_dir=Path(tmp) / "timed", progress=False)
    seconds = {k: res.timings.get(k, 0.0) for k in ("lora", "inversion", "drag", "denoise", "decode", "total")}
    seconds["encode"] = pipe.encode_seconds
    seconds["other"] = seconds["total"] - sum(seconds[k] for k in ("lora", "inversion", "drag", "denoise", "decode"))
    seconds["rest"] = seconds["total"] - seconds["lora"]
    out = {
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "settings": {
            "fuse_lora": pipe.fuse_lora, "fused_adam": pipe.fused_adam,
            "channels_last": pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
            and not pipe.unet.conv_in.weight.is_contiguous(),
            "low_memory": pipe.low_memory, "reference": isinstance(pipe, ReferencePipeline),
        },
        "seconds": {k: seconds[k] for k in PHASES},
        "peak_bytes": None,
        "stats": dataclasses.asdict(res.stats),
        "lora_source": res.lora.get("source"),
        "handle_points": np.asarray(res.handle_points).round(3).tolist(),  # final handles, (x, y) input px
    }
    if cuda:
        pipe._flush_peak()
        peaks = {k: pipe.peaks.get(k, 0) for k in PEAK_PHASES if k != "total"}
        peaks["total"] = max(peaks.values())
        out["peak_bytes"] = peaks
    if args.sync_debug and path == "default" and cuda:
        by_phase: dict[str, int] = {}
        for phase, _ in syncs:
            by_phase[phase] = by_phase.get(phase, 0) + 1
        out["host_syncs"] = {"total": len(syncs), "by_phase": by_phase,
                             "trackings": res.stats.tracking_steps}
    result = np.asarray(res.image)
    del pipe, res
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out, result


@contextlib.contextmanager
def _sync_debug(pipe: MeasuredPipeline, record: list, enabled: bool):
    """With ``--sync-debug`` on CUDA: list every synchronizing CUDA call, with its phase."""
    if not enabled:
        yield
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            record.append((pipe.current_phase, f"{filename}:{lineno}"))
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = previous


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
    }
    for name in ("torch", "diffusers", "transformers", "peft", "gooddrag"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def count_ops(model: str, resolution: int) -> dict[str, dict[str, int]]:
    """Aten operators per UNet call (batch 1, fp16 weights, frozen), on the meta device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    meta = torch.device("meta")
    sd = build_sd15(meta) if model == "sd15" else build_model(model, meta, torch.float32)
    unet = sd.unet.to(torch.float16).requires_grad_(False)
    size = resolution // vae_scale_factor(sd.vae.config)
    text = torch.zeros(1, 77, unet.config.cross_attention_dim, device=meta, dtype=torch.float16)

    def count() -> dict[str, int]:
        out = {}
        for name, backward in (("forward", False), ("forward_backward", True)):
            z = torch.zeros(1, unet.config.in_channels, size, size, device=meta, requires_grad=backward)
            with Count() as c, torch.set_grad_enabled(backward):
                eps = unet(z.half(), torch.tensor(500, device=meta), encoder_hidden_states=text).sample
                if backward:
                    eps.float().sum().backward()
            out[name] = c.n
        return out

    report = {"base": count()}
    unet.requires_grad_(True)  # as a model built by hand comes (DragPipeline now freezes it)
    report["base_weights_trainable"] = count()
    unet.requires_grad_(False)
    lora.add_lora(unet, 16)
    unet.to(torch.float16).requires_grad_(False)
    report["lora_unfused"] = count()
    lora.fuse_lora(unet)
    report["lora_fused"] = count()
    return report


# Issue 6's targets (an H100, SD1.5 at 512x512, the full schedule).
TARGETS = {"total_s": 10.0, "lora_s": 4.0, "rest_s": 6.0, "peak_default_gb": 8.0, "peak_low_memory_gb": 6.0,
           "speedup": 4.0}


def check_targets(report: dict) -> list[dict]:
    paths = report["paths"]
    d = paths["default"]
    rows = [
        ("total_s", d["seconds"]["total"], "<="),
        ("lora_s", d["seconds"]["lora"], "<="),
        ("rest_s", d["seconds"]["rest"], "<="),
    ]
    if d["peak_bytes"]:
        rows.append(("peak_default_gb", d["peak_bytes"]["total"] / GB, "<="))
    if "low_memory" in paths and paths["low_memory"]["peak_bytes"]:
        rows.append(("peak_low_memory_gb", paths["low_memory"]["peak_bytes"]["total"] / GB, "<="))
    if report.get("speedup") is not None:
        rows.append(("speedup", report["speedup"], ">="))
    return [
        {"target": name, "value": value, "limit": TARGETS[name],
         "ok": value <= TARGETS[name] if op == "<=" else value >= TARGETS[name]}
        for name, value, op in rows
    ]


def print_report(report: dict) -> None:
    paths = list(report["paths"])
    print(f"{report['machine'].get('gpu', report['machine']['processor'])}, model {report['model']}, "
          f"{report['resolution']} px, schedule {report['schedule']}")
    print(f"{'seconds':<12}" + "".join(f"{p:>14}" for p in paths))
    for k in PHASES:
        print(f"{k:<12}" + "".join(f"{report['paths'][p]['seconds'][k]:>14.3f}" for p in paths))
    if all(report["paths"][p]["peak_bytes"] for p in paths):
        print(f"{'peak GB':<12}" + "".join(f"{p:>14}" for p in paths))
        for k in PEAK_PHASES:
            print(f"{k:<12}" + "".join(f"{report['paths'][p]['peak_bytes'][k] / GB:>14.2f}" for p in paths))
    for p in paths:
        diff = report["paths"][p].get("image_vs_default")
        if diff:
            print(f"{p} vs default image: max |diff| {diff['max_abs']} / 255, mean {diff['mean_abs']:.3f}")
    if report.get("speedup") is not None:
        print(f"speed-up (reference / default total): {report['speedup']:.2f}x")
    for row in report.get("targets", []):
        print(f"target {row['target']}: {row['value']:.2f} (limit {row['limit']}) {'ok' if row['ok'] else 'MISSED'}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["sd15", "tiny"], default="sd15", help="SD1.5-sized random model, or the tiny one (default: %(default)s)")
    ap.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default: %(default)s)")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None,
                    help="weights of the default and low-memory paths (default: fp16 on CUDA, fp32 elsewhere); the reference is fp32")
    ap.add_argument("--resolution", type=int, default=None, help="working side in px (default: 512 for sd15, 128 for tiny)")
    ap.add_argument("--schedule", choices=list(SCHEDULES), default="full", help="full: GoodDrag's defaults; short: a few steps of each (default: %(default)s)")
    ap.add_argument("--reference", action="store_true", help="also run the reference path and report the speed-up")
    ap.add_argument("--low-memory", action="store_true", help="also run the low-memory path")
    ap.add_argument("--attention-slicing", action="store_true", help="low-memory path: sliced attention as well")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                    help="a short untimed edit first (default: on CUDA)")
    ap.add_argument("--disable", default="", type=lambda v: [f for f in v.split(",") if f],
                    help="comma list of speed features to turn off in the default and low-memory paths: "
                         f"{', '.join(ABLATIONS)} (default: none)")
    ap.add_argument("--sync-debug", action="store_true", help="CUDA: count synchronizing calls per phase in the default path")
    ap.add_argument("--count-ops", action="store_true", help="only count aten operators per UNet call (meta device, any machine)")
    ap.add_argument("--seed", type=int, default=0, help="weights' seed (default: %(default)s)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--estimate", nargs="*", default=[], metavar="REPORT",
                    help="gooddrag bench estimate --json reports (default, --low-memory) to print beside the measured peaks")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.disable) - set(ABLATIONS))
    if unknown:
        ap.error(f"--disable: unknown feature(s) {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}")

    from gooddrag.models.loading import resolve_device

    if args.count_ops:
        args.resolution = args.resolution or (512 if args.model == "sd15" else 128)
        report = {"machine": machine_info(torch.device("meta")), "model": args.model, "resolution": args.resolution,
                  "ops_per_unet_call": count_ops(args.model, args.resolution)}
        print(f"aten operators per UNet call, model {args.model}, {args.resolution} px, batch 1")
        for variant, counts in report["ops_per_unet_call"].items():
            print(f"{variant:<24} forward {counts['forward']:>6}   forward+backward {counts['forward_backward']:>6}")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2))
        return report
    device = resolve_device(args.device)
    if args.model == "sd15" and device.type != "cuda":
        ap.error("the full-size model needs a GPU; use --model tiny on the CPU")
    if args.dtype == "fp16" and device.type == "cpu":
        ap.error("fp16 is not supported on the CPU; use fp32 or bf16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    args.resolution = args.resolution or (512 if args.model == "sd15" else 128)
    args.warmup = device.type == "cuda" if args.warmup is None else args.warmup

    paths = ["default"] + (["reference"] if args.reference else []) + (["low_memory"] if args.low_memory else [])
    report = {
        "machine": machine_info(device), "model": args.model, "resolution": args.resolution,
        "schedule": args.schedule, "config": make_config(args.model, args.schedule, args.resolution).to_dict(),
        "warmup": args.warmup, "disabled": args.disable, "paths": {},
    }
    images = {}
    for path in paths:
        report["paths"][path], images[path] = run_path(path, args, device, dtype)
    for path in paths[1:]:
        diff = np.abs(images[path].astype(np.int16) - images["default"].astype(np.int16))
        report["paths"][path]["image_vs_default"] = {"max_abs": int(diff.max()), "mean_abs": float(diff.mean())}
    report["speedup"] = (report["paths"]["reference"]["seconds"]["total"] / report["paths"]["default"]["seconds"]["total"]
                         if args.reference else None)
    if device.type == "cuda" and args.model == "sd15" and args.schedule == "full" and args.resolution == 512:
        report["targets"] = check_targets(report)
    print_report(report)
    report["estimate_vs_measured"] = compare_with_estimates(report, args.estimate)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def compare_with_estimates(report: dict, estimates: list[str]) -> dict:
    """Each ``gooddrag bench estimate`` report beside the path it simulates (default, or low_memory
    with ``--low-memory``): the simulated peak per phase against ``max_memory_allocated``'s; printed."""
    rows = {}
    for path_name in estimates:
        est = json.loads(Path(path_name).read_text())
        path = "low_memory" if est["low_memory"] else "default"
        measured = report["paths"].get(path, {}).get("peak_bytes")
        if not measured:
            print(f"estimate {path_name}: no measured peaks for the {path} path (CUDA only)")
            continue
        rows[path] = {phase: {"estimate": est["phases"][phase]["peak_bytes"], "measured": measured.get(phase)}
                      for phase in est["phases"]} | {"total": {"estimate": est["peak_bytes"], "measured": measured["total"]}}
        print(f"{path}: simulated against max_memory_allocated, GiB: " + ", ".join(
            f"{k} {v['estimate'] / 2**30:.2f}/{(v['measured'] or 0) / 2**30:.2f}" for k, v in rows[path].items()))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
