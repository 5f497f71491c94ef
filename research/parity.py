"""Parity run: the GoodDrag authors' implementation and ours on identical weights and inputs.

Runs the authors' ``GoodDragger.good_drag`` (their repository
zewei-Zhang/GoodDrag, checked out by the user; nothing of it is copied here,
it is imported from ``--reference-repo`` at run time) and our
``DragPipeline`` with the ``gooddrag`` preset on the same model folder and the
same image, mask and points: fp32, CPU, no LoRA, the values of their
``bench_gooddrag.py`` (inversion 0.75, lam 0.1, lr 0.02, 7 x 10 x 3, r1 4,
r2 12, beta 4, threshold 0, max_track_no_change 5). It records, for both, the
sequence of drag events (forward passes with gradient ``F``, optimiser steps
``S``, trackings ``T`` with the handles they found, batched DDIM steps ``B``
with whether mutual self-attention was on) and the final latent, and reports
where they agree.

The authors' code needs CUDA and some old packages; for a CPU run this script
makes ``Tensor.cuda`` a no-op, replaces ``accelerate.Accelerator(mixed_precision
="fp16")`` by plain fp32 backward, and stubs ``pytorch_lightning.seed_everything``
(their pipeline imports it; nothing random happens without a LoRA). Their code
also needs ``einops``: ``pip install einops``.

    git clone https://github.com/zewei-Zhang/GoodDrag /tmp/GoodDrag
    python research/parity.py --reference-repo /tmp/GoodDrag --json parity.json

Coordinates: points are (x, y) image pixels; handles in the report are
(row, col) supervision-grid cells, as both implementations hold them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from gooddrag import DragPipeline, get_preset  # noqa: E402
from gooddrag.methods.base import DragHooks, track  # noqa: E402
from gooddrag.models.attention import MutualSelfAttentionProcessor  # noqa: E402
from gooddrag.models.tiny import save_tiny_pipeline  # noqa: E402

# bench_gooddrag.py's values (their benchmark script)
BENCH = dict(inversion_strength=0.75, lam=0.1, lr=0.02, drag_end_step=7, track_per_step=10, r1=4, r2=12,
             beta=4, max_drag_per_track=3, drag_loss_threshold=0.0, max_track_no_change=5)

CASES = {
    # (x, y) image pixels on the 256 x 256 test image (supervision grid 128 x 128);
    # handles stay >= r2 cells from the border, where the authors' slices break.
    # a short drag: 4 cells, finished in the first timestep
    "short": [[112, 128], [120, 128]],
    # a long drag: 64 cells, over several timesteps
    "long": [[64, 128], [192, 128]],
    # two pairs, diagonal
    "two": [[80, 96], [120, 140], [168, 176], [140, 144]],
}


def make_inputs(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with a bright disc (uint8 (H, W, 3)) and a central mask (uint8 0/255)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx / size * 200, yy / size * 200, np.full_like(xx, 80.0)], -1)
    img[(yy - size * 0.5) ** 2 + (xx - size * 0.4) ** 2 < (size * 0.15) ** 2] = [250, 220, 40]
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 5: size * 4 // 5, size // 6: size * 5 // 6] = 255
    return img, mask


class Recorder:
    """Drag events of one run, from hooks on the UNet, the optimisers and tracking."""

    def __init__(self):
        self.events: list[tuple] = []
        self.final_latent: torch.Tensor | None = None

    def unet_pre_hook(self, mutual_on):
        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            if sample.requires_grad:
                self.events.append(("F",))
            elif sample.shape[0] == 2:
                self.events.append(("B", bool(mutual_on(module))))
        return hook

    def step_hook(self, optimizer, args, kwargs):
        self.events.append(("S",))

    def tracked(self, handles: torch.Tensor):
        self.events.append(("T", [[int(v) for v in row] for row in handles.tolist()]))


@contextlib.contextmanager
def recording(unet, recorder: Recorder, mutual_on):
    h1 = unet.register_forward_pre_hook(recorder.unet_pre_hook(mutual_on), with_kwargs=True)
    h2 = register_optimizer_step_post_hook(recorder.step_hook)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def run_ours(model_dir: Path, image: np.ndarray, mask: np.ndarray, points, config) -> Recorder:
    rec = Recorder()
    pipe = DragPipeline.from_pretrained(str(model_dir), device="cpu")

    def tracked(*args, **kwargs):
        out = track(*args, **kwargs)
        rec.tracked(out)
        return out

    def same_pixels_as_reference(working_image):
        # Their preprocessing (x / 127.5 - 1) and diffusers' (2 (x / 255) - 1) differ in the last
        # bit, which moves the latent by ~1e-5: feed both the same tensor.
        x = torch.from_numpy(np.asarray(working_image.convert("RGB"))).float() / 127.5 - 1
        return x.permute(2, 0, 1)[None].to(pipe.device, pipe.vae.dtype)

    pipe.hooks = DragHooks(track=tracked, pixels=same_pixels_as_reference)  # the library's public hooks

    def mutual_on(unet):
        return any(isinstance(p, MutualSelfAttentionProcessor) for p in unet.attn_processors.values())

    with recording(pipe.unet, rec, mutual_on):
        result = pipe(Image.fromarray(image), points[0::2], points[1::2], mask > 0, config=config, progress=False)
    rec.final_latent = result.latents.detach().clone()
    return rec


def import_reference(repo: Path):
    """Import the authors' pipeline module with the CPU shims described above."""
    sys.modules.setdefault("pytorch_lightning", types.SimpleNamespace(seed_everything=lambda seed: None))
    torch.Tensor.cuda = lambda self, *a, **k: self  # noqa: E731 (CPU run)
    sys.path.insert(0, str(repo))
    module = importlib.import_module("pipeline")

    class PlainAccelerator:
        """fp32 stand-in for their Accelerator(mixed_precision='fp16')."""

        def __init__(self, *args, **kwargs):
            pass

        def prepare(self, *objs):
            return objs

        def backward(self, loss):
            loss.backward()

    module.Accelerator = PlainAccelerator
    return module


def set_reference_mutual_layer(module, start_layer: int) -> None:
    """Their ``set_latent_masactrl`` fixes start_layer 10 (SD1.5's last 6 of 16 transformer
    blocks); a model with fewer blocks needs another value, the same one ours is given."""
    control = module.MutualSelfAttentionControl

    def make(*args, **kwargs):
        return control(*args, **(kwargs | {"start_layer": start_layer}))

    module.MutualSelfAttentionControl = make


def run_reference(module, model_dir: Path, image: np.ndarray, mask: np.ndarray, points, b: dict,
                  perturb: float = 0.0) -> Recorder:
    """The authors' run; ``perturb`` adds a constant to the input pixels in [-1, 1] (the noise-floor run)."""
    rec = Recorder()
    h, w = image.shape[:2]
    dragger = module.GoodDragger(
        torch.device("cpu"), str(model_dir), "", h, w, b["inversion_strength"], b["r1"], b["r2"], b["beta"],
        b["drag_end_step"], b["track_per_step"], b["lam"], b["lr"], 50, 1.0, 3, False, "default", "", 42,
        b["max_drag_per_track"], b["drag_loss_threshold"], False, b["max_track_no_change"],
    )
    track = module.point_tracking

    def tracked(*args, **kwargs):
        out = track(*args, **kwargs)
        rec.tracked(torch.stack([p.float() for p in out]))
        return out

    module.point_tracking = tracked
    to_image = dragger.latent2image

    def decoded(latents, *args, **kwargs):
        rec.final_latent = latents.detach().clone()
        return to_image(latents, *args, **kwargs)

    dragger.latent2image = decoded

    def mutual_on(unet):
        # their editor replaces the attention modules' ``forward``: detect that
        return any("forward" in vars(m) for m in unet.modules() if type(m).__name__ == "Attention")

    source = torch.from_numpy(image).float() / 127.5 - 1
    source = source.permute(2, 0, 1)[None] + perturb
    flat = [list(map(float, p)) for p in points]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), recording(dragger.model.unet, rec, mutual_on):
        dragger.good_drag(source, flat, mask, return_intermediate_images=False)
    module.point_tracking = track
    return rec


def import_dragdiffusion(repo: Path):
    """Import DragDiffusion's pipeline and drag/attention utilities with the CPU shims."""
    sys.modules.setdefault("pytorch_lightning", types.SimpleNamespace(seed_everything=lambda seed: None))
    torch.Tensor.cuda = lambda self, *a, **k: self  # noqa: E731 (CPU run)
    sys.path.insert(0, str(repo))
    return types.SimpleNamespace(
        pipeline=importlib.import_module("drag_pipeline"),
        drag=importlib.import_module("utils.drag_utils"),
        attn=importlib.import_module("utils.attn_utils"),
    )


def run_dragdiffusion(modules, model_dir: Path, image: np.ndarray, mask: np.ndarray, points, start_layer: int,
                      perturb: float = 0.0) -> Recorder:
    """DragDiffusion's ``run_drag`` (utils/ui_utils.py), step by step with its own functions, in fp32 on
    the CPU, no LoRA, its drag_ui.py values (inversion 0.7, lam 0.1, lr 0.01, 80 steps, r_m 1, r_p 3).
    Its ui_utils module imports gradio, cv2 and torchvision, so this glue calls the pieces instead."""
    from diffusers import DDIMScheduler

    rec = Recorder()
    h, w = image.shape[:2]
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    model = modules.pipeline.DragPipeline.from_pretrained(str(model_dir), scheduler=scheduler)
    model.modify_unet_forward()
    model.unet.set_default_attn_processor()
    args = types.SimpleNamespace(
        prompt="", points=points, n_inference_step=50, n_actual_inference_step=round(0.7 * 50), guidance_scale=1.0,
        unet_feature_idx=[3], r_m=1, r_p=3, lam=0.1, lr=0.01, n_pix_step=80,
        sup_res_h=int(0.5 * h), sup_res_w=int(0.5 * w),
    )
    source = (torch.from_numpy(image).float() / 127.5 - 1).permute(2, 0, 1)[None] + perturb
    m = torch.from_numpy(mask).float() / 255.0
    m[m > 0.0] = 1.0
    m = torch.nn.functional.interpolate(m[None, None], (args.sup_res_h, args.sup_res_w), mode="nearest")
    handles, targets = [], []
    for i, (x, y) in enumerate(points):
        p = torch.round(torch.tensor([y / h * args.sup_res_h, x / w * args.sup_res_w]))
        (handles if i % 2 == 0 else targets).append(p)
    track = modules.drag.point_tracking

    def tracked(*a, **k):
        out = track(*a, **k)
        rec.tracked(torch.stack([p.float() for p in out]))
        return out

    modules.drag.point_tracking = tracked
    to_image = model.latent2image

    def decoded(latents, *a, **k):
        rec.final_latent = latents[-1:].detach().clone()  # [source, edited]: keep the edit
        return to_image(latents, *a, **k)

    model.latent2image = decoded

    def mutual_on(unet):
        return any("forward" in vars(mod) for mod in unet.modules() if type(mod).__name__ == "Attention")

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), recording(model.unet, rec, mutual_on):
        text = model.get_text_embeddings(args.prompt)
        code = model.invert(source, args.prompt, encoder_hidden_states=text, guidance_scale=1.0,
                            num_inference_steps=50, num_actual_inference_steps=args.n_actual_inference_step)
        code_orig = code.clone()
        model.scheduler.set_timesteps(50)
        t = model.scheduler.timesteps[50 - args.n_actual_inference_step]
        updated = modules.drag.drag_diffusion_update(model, code, text, t, handles, targets, m, args)
        editor = modules.attn.MutualSelfAttentionControl(start_step=0, start_layer=start_layer, total_steps=50,
                                                         guidance_scale=1.0)
        modules.attn.register_attention_editor_diffusers(model, editor, attn_processor="attn_proc")
        model(prompt="", encoder_hidden_states=torch.cat([text] * 2), batch_size=2,
              latents=torch.cat([code_orig, updated.detach()]), guidance_scale=1.0, num_inference_steps=50,
              num_actual_inference_steps=args.n_actual_inference_step)
    modules.drag.point_tracking = track
    return rec


def summarize(ours: Recorder, ref: Recorder) -> dict:
    """Where the two runs agree: event order, trackings, steps per timestep, final latent."""
    def steps_per_timestep(events):
        out, n = [], 0
        for e in events:
            if e[0] == "S":
                n += 1
            elif e[0] == "B":
                out.append(n)
                n = 0
        return out

    def shape(events):
        # The authors' loop runs a forward pass before testing the stop rules and then
        # breaks; ours tests them first. Such an unused forward (an F right before a
        # batched step, with no step or tracking after it) changes nothing: drop it.
        kinds = [e[0] for e in events]
        return [k for i, k in enumerate(kinds) if not (k == "F" and i + 1 < len(kinds) and kinds[i + 1] == "B")]

    t_ours = [e[1] for e in ours.events if e[0] == "T"]
    t_ref = [e[1] for e in ref.events if e[0] == "T"]
    first_diff = next((i for i, (a, b) in enumerate(zip(t_ours, t_ref)) if a != b), None)
    diff = (ours.final_latent - ref.final_latent).abs()
    return {
        "event_order_equal": shape(ours.events) == shape(ref.events),
        "events": {"ours": len(ours.events), "reference": len(ref.events)},
        "trackings": {"ours": len(t_ours), "reference": len(t_ref)},
        "trackings_equal": t_ours == t_ref,
        "first_tracking_difference": first_diff,
        "final_handles": {"ours": t_ours[-1] if t_ours else None, "reference": t_ref[-1] if t_ref else None},
        "steps_per_timestep": {"ours": steps_per_timestep(ours.events), "reference": steps_per_timestep(ref.events)},
        "mutual_attention_per_step": {
            "ours": [e[1] for e in ours.events if e[0] == "B"],
            "reference": [e[1] for e in ref.events if e[0] == "B"],
        },
        "final_latent_max_abs_diff": float(diff.max()),
        "final_latent_max_abs": float(ref.final_latent.abs().max()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, required=True,
                    help="checkout of zewei-Zhang/GoodDrag (--method gooddrag) or Yujun-Shi/DragDiffusion (dragdiffusion)")
    ap.add_argument("--method", choices=["gooddrag", "dragdiffusion"], default="gooddrag")
    ap.add_argument("--model", type=Path, default=None,
                    help="diffusers folder (SD1.5-shaped; default: the tiny random model, made now)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--noise-floor", action="store_true",
                    help="also run the authors' code on an input moved by 1e-6 and compare it with itself")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args(argv)
    entry = "pipeline.py" if args.method == "gooddrag" else "drag_pipeline.py"
    if not (args.reference_repo / entry).is_file():
        ap.error(f"--reference-repo {args.reference_repo}: no {entry} there")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gooddrag-parity-") as tmp:
        model_dir = args.model or save_tiny_pipeline(Path(tmp) / "tiny-sd")  # no "xl" in the path: they guess SDXL from it
        image, mask = make_inputs()
        overrides = dict(resolution=image.shape[0], lora_steps=0)
        if args.model is None:  # the tiny UNet has 10 transformer blocks: mutual in its last 3
            overrides["mutual_attention_start_layer"] = 7
        config = get_preset(args.method, **overrides)
        if args.method == "gooddrag":
            module = import_reference(args.reference_repo)
            set_reference_mutual_layer(module, config.mutual_attention_start_layer)

            def reference(points, perturb=0.0):
                return run_reference(module, model_dir, image, mask, points, BENCH, perturb=perturb)
        else:
            modules = import_dragdiffusion(args.reference_repo)

            def reference(points, perturb=0.0):
                return run_dragdiffusion(modules, model_dir, image, mask, points, config.mutual_attention_start_layer,
                                         perturb=perturb)
        report = {"method": args.method, "config": config.to_dict(), "cases": {}}
        for name in args.cases.split(","):
            points = CASES[name]
            ours = run_ours(model_dir, image, mask, points, config)
            ref = reference(points)
            report["cases"][name] = {"points_xy": points} | summarize(ours, ref)
            if args.noise_floor:
                # The authors' code against itself with the input moved by 1e-6: how far
                # float noise alone carries a run on this model.
                report["cases"][name]["noise_floor"] = summarize(reference(points, perturb=1e-6), ref)
            print(name, json.dumps(report["cases"][name]), flush=True)  # a script's report, not library code
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
