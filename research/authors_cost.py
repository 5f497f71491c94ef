"""The authors' GoodDrag and DragDiffusion at real size, on the instrument of ``gooddrag bench estimate``.

Their schedules, counted from their code (the snapshots docs/method.md's parity section ran:
zewei-Zhang/GoodDrag ``bench_gooddrag.py``, ``pipeline.py`` ``GoodDragger.good_drag`` /
``gooddrag_step`` / ``get_original_features`` / ``invert``, ``utils/lora_utils.py``;
Yujun-Shi/DragDiffusion ``utils/ui_utils.py`` ``run_drag``, ``utils/drag_utils.py``
``drag_diffusion_update``, ``utils/lora_utils.py``), are UNet calls of a few kinds, each with their
batch, weights' dtype, autocast, attention kernel and LoRA (as attention processors, never fused):

GoodDrag (SD 1.5 at 512; SDXL at 1024 through their SDXL branch, which drops the added conditioning)
  LoRA      70 steps, batch 4, fp16 weights + fp16 autocast, SDPA (LoRAAttnProcessor2_0)
  inversion 38 forward passes, batch 1, fp32 weights, no autocast, SDPA + LoRA
  drag      8 reference passes (``i <= t2``), then 7 timesteps x 10 rounds x 3 steps = 210 forward +
            backward passes to the latent, fp32 weights + fp16 autocast (accelerate), SDPA + LoRA;
            the text encoder and the VAE encoder moved to the CPU first (their own cut)
  denoise   38 batched steps (source + edit), fp32: 7 plain, 31 with MasaCtrl's editor, which computes
            every attention explicitly (the attention matrix materialised), mutual from layer 10
DragDiffusion (SD 1.5 at 512)
  LoRA      80 steps, batch 4, as GoodDrag's
  inversion 35 forward passes, batch 1, fp16 weights
  drag      1 reference pass (fp32) + 80 forward + backward passes, ``unet.float()`` + fp16 autocast
  denoise   35 batched steps, ``unet.half()``, MasaCtrl's explicit attention from step 0

With the early stops off the order of these calls is the one research/parity.py's Recorder recorded
for both codes on the tiny model (docs/method.md, "Parity"): ours plus, for GoodDrag, one unused
forward pass at a stop (none when the budget runs out). Each kind is run once on the fake real-size
model set up as theirs, under :class:`gooddrag.benchmark.estimate_counters.Counters`; its FLOPs and
operators times its count give the phase's; the phase's peak is that of its call with the weights
they hold then (VAE encode and decode, and text encoding, counted the same way).

    python research/authors_cost.py --json authors.json      # SD 1.5 GoodDrag + DragDiffusion, SDXL GoodDrag
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0  # noqa: E402

from gooddrag.benchmark import estimate_sim as E  # noqa: E402
from gooddrag.benchmark.estimate_counters import Counters, PhaseFigures  # noqa: E402
from gooddrag.benchmark.estimate_models import (  # noqa: E402
    build_fake_pipeline,
    builtin_configs,
    fake_mode,
    fake_new_parameters,
)
from gooddrag.models import lora  # noqa: E402
from gooddrag.models.attention import MutualSelfAttentionProcessor, self_attention_layer_names  # noqa: E402

H100 = 989e12


@dataclass(frozen=True)
class Call:
    """One kind of UNet call: ``grad`` None (no grad), ``"latent"`` (the drag) or ``"lora"``
    (training); ``attention`` ``"sdpa"`` or ``"explicit"`` (diffusers' AttnProcessor: scores,
    softmax, bmm, as MasaCtrl's editor computes them); ``mutual_from`` the first mutual layer."""

    batch: int
    dtype: torch.dtype
    grad: str | None = None
    autocast: bool = False
    attention: str = "sdpa"
    mutual_from: int | None = None


@dataclass(frozen=True)
class Step:
    phase: str
    call: Call
    count: int
    held: tuple[str, ...] = ("unet", "vae", "text_encoder")
    """The models on the GPU during these calls (besides the UNet's LoRA)."""


FP16, FP32 = torch.float16, torch.float32
GOODDRAG = [
    Step("lora", Call(4, FP16, grad="lora", autocast=True), 70),
    Step("inversion", Call(1, FP32), 38),
    Step("drag", Call(1, FP32), 8, held=("unet", "vae.decoder")),
    Step("drag", Call(1, FP32, grad="latent", autocast=True), 210, held=("unet", "vae.decoder")),
    Step("denoise", Call(2, FP32), 7, held=("unet", "vae.decoder")),
    Step("denoise", Call(2, FP32, attention="explicit", mutual_from=10), 31, held=("unet", "vae.decoder")),
]
DRAGDIFFUSION = [
    Step("lora", Call(4, FP16, grad="lora", autocast=True), 80),
    Step("inversion", Call(1, FP16), 35),
    Step("drag", Call(1, FP32), 1),
    Step("drag", Call(1, FP32, grad="latent", autocast=True), 80),
    Step("denoise", Call(2, FP16, attention="explicit", mutual_from=10), 35),
]


@dataclass
class Models:
    """The fake real-size models in one dtype, with a LoRA (fake, unfused) on the UNet."""

    sd: object
    lora_params: list = field(default_factory=list)


def build(arch: str, dtype: torch.dtype) -> Models:
    mode = fake_mode()
    with E.quiet_diffusers():
        sd = build_fake_pipeline(builtin_configs(arch), dtype, mode)
    if arch == "sdxl":
        sd.unet.config.addition_embed_type = None  # their SDXL branch (GoodDrag pipeline.py __init__)
    with fake_new_parameters(mode):
        params = lora.attach_fresh_lora(sd.unet, 16, torch.Generator().manual_seed(0))
    return Models(sd, params)


def held_tensors(models: Models, held: tuple[str, ...]):
    for name in held:
        module = models.sd
        for part in name.split("."):
            module = getattr(module, part)
        yield from module.parameters()


def set_attention(unet, call: Call) -> None:
    base = AttnProcessor if call.attention == "explicit" else AttnProcessor2_0
    names = self_attention_layer_names(unet)
    mutual = set(names[call.mutual_from:]) if call.mutual_from is not None else set()
    processors = {}
    for key in unet.attn_processors:
        layer = key.rsplit(".processor", 1)[0]
        processors[key] = MutualSelfAttentionProcessor(base()) if layer in mutual else base()
    unet.set_attn_processor(processors)


def run_call(models: Models, call: Call, latent: int, held: tuple[str, ...]) -> PhaseFigures:
    """One call of the kind, counted with the models ``held`` live; returns its figures."""
    unet = models.sd.unet
    set_attention(unet, call)
    for p in models.lora_params:
        p.requires_grad_(call.grad == "lora")
    width = unet.config.cross_attention_dim
    optimizer = None
    if call.grad == "lora":  # AdamW's state exists through training: made before the counted pass
        optimizer = torch.optim.AdamW(models.lora_params, lr=1e-4)
        for p in models.lora_params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    counters = Counters()
    with counters:
        counters.track_existing(held_tensors(models, held))
        counters.track_existing(models.lora_params)
        if optimizer is not None:
            counters.track_existing(t for state in optimizer.state.values() for t in state.values())
        z = torch.zeros(call.batch, 4, latent, latent, requires_grad=call.grad == "latent")
        text = torch.zeros(call.batch, 77, width, dtype=call.dtype)
        with torch.set_grad_enabled(call.grad is not None), torch.autocast("cpu", FP16, enabled=call.autocast):
            out = unet(z.to(call.dtype), torch.tensor([500] * call.batch), encoder_hidden_states=text).sample
        if call.grad is not None:
            out.float().pow(2).mean().backward()
            if optimizer is not None:
                optimizer.step()
        del out, z
    return counters.finish()["other"]


def vae_cost(models: Models, pixels: int, batch: int, encode: bool) -> PhaseFigures:
    vae = models.sd.vae
    counters = Counters()
    with counters, torch.no_grad():
        counters.track_existing(held_tensors(models, ("unet", "vae")))
        if encode:
            vae.encode(torch.zeros(batch, 3, pixels, pixels, dtype=vae.dtype)).latent_dist.mean
        else:
            vae.decode(torch.zeros(batch, 4, pixels // 8, pixels // 8, dtype=vae.dtype))
    return counters.finish()["other"]


def cost(schedule: list[Step], arch: str, pixels: int) -> dict:
    """Phase -> FLOPs, operators, peak for ``schedule`` at ``pixels``; one fake call per kind."""
    models = {FP16: build(arch, FP16), FP32: build(arch, FP32)}
    phases: dict[str, dict] = {}
    for step in schedule:
        fig = run_call(models[step.call.dtype], step.call, pixels // 8, step.held)
        row = phases.setdefault(step.phase, {"flops": 0, "ops": 0, "peak_bytes": 0})
        row["flops"] += fig.flops * step.count
        row["ops"] += fig.ops * step.count
        row["peak_bytes"] = max(row["peak_bytes"], fig.peak_bytes)
    # VAE: LoRA training encodes its batch of 4 (fp16), inversion encodes (fp32), the end decodes
    for phase, dtype, batch, encode in (("lora", FP16, 4, True), ("inversion", FP32, 1, True), ("decode", FP32, 1, False)):
        fig = vae_cost(models[dtype], pixels, batch, encode)
        row = phases.setdefault(phase, {"flops": 0, "ops": 0, "peak_bytes": 0})
        row["flops"] += fig.flops
        row["ops"] += fig.ops
        row["peak_bytes"] = max(row["peak_bytes"], fig.peak_bytes)
    return {"phases": phases, "flops": sum(r["flops"] for r in phases.values()),
            "peak_bytes": max(r["peak_bytes"] for r in phases.values())}


def ours(arch: str, pixels: int, method: str, ours_json: Path | None) -> dict:
    if ours_json is not None and ours_json.is_file():
        return json.loads(ours_json.read_text())
    return E.estimate(E.Request(model=arch, resolution=pixels, method=method), progress=False, jobs=2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", nargs="*", type=Path, default=[],
                    help="gooddrag bench estimate reports (sd15-gooddrag, sd15-dragdiffusion, sdxl-gooddrag) "
                         "to use instead of running the estimator")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    given = {(r["model"], r["method"]): path for path in args.ours for r in [json.loads(path.read_text())]}
    result = {}
    for arch, pixels, method, schedule in (("sd15", 512, "gooddrag", GOODDRAG), ("sd15", 512, "dragdiffusion", DRAGDIFFUSION),
                                           ("sdxl", 1024, "gooddrag", GOODDRAG)):
        theirs = cost(schedule, arch, pixels)
        mine = ours(arch, pixels, method, given.get((arch, method)))
        result[f"{arch}-{method}"] = {"theirs": theirs, "ours": {k: mine[k] for k in ("flops", "peak_bytes", "phases")}}
        print(f"{arch} {method} at {pixels}: theirs {theirs['flops'] / 1e12:.0f} TFLOP ({theirs['flops'] / H100:.2f} s "
              f"at H100 bf16 peak), peak {theirs['peak_bytes'] / 2**30:.2f} GiB; ours {mine['flops'] / 1e12:.0f} TFLOP "
              f"({mine['flops'] / H100:.2f} s), peak {mine['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
