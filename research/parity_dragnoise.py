"""Parity run: DragNoise's authors' code and our ``dragnoise`` method on identical weights and inputs.

Runs the authors' ``drag_diffusion_update`` (haofengl/DragNoise, snapshot 1072731, checked out by the
user; nothing of it is copied here, it is imported from ``--reference-repo`` at run time) and their
pipeline's sampling with the optimised bottleneck, step by step as their benchmark's ``run_drag``
(drag_bench_evaluation/run_drag_diffusion.py) calls them: ``DragPipeline.invert``,
``drag_diffusion_update``, ``DragPipeline.__call__`` with ``h_feature``. Beside it runs our
``DragPipeline`` with the ``dragnoise`` preset through the public API. Both use the tiny random model
(gooddrag.models.tiny), 256 x 256, fp32, CPU, no LoRA, the same input tensor and the benchmark's
values (inversion 0.7, 80 steps, lr 0.02, lam 0.2, end_step 0), or with ``--end-step`` / ``--steps``
other values given to both. ``--no-mask``: no mask for either (their zeros mask; our ``mask=None``,
whose background term holds the whole image as theirs with ``background_without_mask``).

Recorded for both: the events (``F`` a forward pass with gradient, ``N`` one without, each with
whether the optimised bottleneck replaced the mid block's output; ``S`` an optimiser step; ``T`` a
point tracking with the handles it returned), the bottleneck the decoder received at the first
denoising step (h*) and the final latent. At every one of their trackings our tracker also runs on
their inputs (a check that no drift between the runs can blur).

CPU shims for their code: ``Tensor.cuda`` a no-op (``get_text_embeddings``), a
``torch.utils.tensorboard`` stub (their utils/drag_utils.py imports ``SummaryWriter`` and never uses
it; tensorboard is not installed). ``torch.autocast("cuda")`` and ``torch.cuda.amp.GradScaler``
switch themselves off on a CPU. No einops, torchvision or pytorch_lightning is needed.

    git clone https://github.com/haofengl/DragNoise /tmp/DragNoise
    python research/parity_dragnoise.py --reference-repo /tmp/DragNoise --noise-floor --json dn.json

Coordinates: points are (x, y) image pixels; tracked handles in the report are (row, col)
supervision-grid cells, as both implementations hold them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from gooddrag.core.tracking import features_at  # noqa: E402
from gooddrag.methods.base import DragHooks, track  # noqa: E402
from gooddrag.models.tiny import save_tiny_pipeline  # noqa: E402

CASES = {
    # (x, y) image pixels on the 256 x 256 test image (supervision grid 128 x 128); every window
    # the tracking (r2 = 3) and the motion term (r1 = 1, one cell ahead) read stays inside the grid
    # (their code has no border guard).
    "short": [[100, 128], [116, 128]],  # 8 cells
    "long": [[70, 128], [170, 128]],  # 50 cells
    "two": [[90, 100], [120, 130], [160, 170], [140, 150]],  # two pairs, diagonal
    "near": [[100, 128], [106, 128]],  # 3 cells: the tiny model gets within 2 (the stop rule ends the drag)
}


def make_inputs(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with a bright disc (uint8 (H, W, 3)) and a central mask (uint8 0/255); the
    same as research/parity.py's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx / size * 200, yy / size * 200, np.full_like(xx, 80.0)], -1)
    img[(yy - size * 0.5) ** 2 + (xx - size * 0.4) ** 2 < (size * 0.15) ** 2] = [250, 220, 40]
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 5: size * 4 // 5, size // 6: size * 5 // 6] = 255
    return img, mask


class Recorder:
    """Events of one run, from hooks on the UNet, its first up block, the optimisers and the tracker."""

    def __init__(self, substituting):
        self.events: list[tuple] = []
        self.h_star: torch.Tensor | None = None
        self.final_latent: torch.Tensor | None = None
        self.tracker_checks: list[bool] = []
        self.substituting = substituting  # (module, kwargs) -> whether the bottleneck is replaced

    def unet_pre_hook(self, module, args, kwargs):
        kind = "F" if torch.is_grad_enabled() else "N"
        self.events.append((kind, bool(self.substituting(module, kwargs))))

    def up_pre_hook(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if self.h_star is None and not torch.is_grad_enabled() and self.events[-1] == ("N", True):
            self.h_star = hidden[:1].detach().clone()  # the first denoising step's bottleneck (row 0)

    def step_hook(self, optimizer, args, kwargs):
        self.events.append(("S",))

    def tracked(self, handles) -> None:
        self.events.append(("T", [[float(v) for v in p] for p in handles]))

    def trackings(self) -> list[list]:
        return [e[1] for e in self.events if e[0] == "T"]


@contextlib.contextmanager
def recording(unet, rec: Recorder):
    hooks = [unet.register_forward_pre_hook(rec.unet_pre_hook, with_kwargs=True),
             unet.up_blocks[0].register_forward_pre_hook(rec.up_pre_hook, with_kwargs=True),
             register_optimizer_step_post_hook(rec.step_hook)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def reference_args(config) -> dict:
    """Their ``args`` fields (run_drag_diffusion.py:98-110) from our config."""
    return dict(r_m=config.r1, r_p=config.r2, lam=config.lam, lr=config.lr, n_pix_step=config.track_per_step,
                end_step=config.propagation_end_step)


def pixels(image: np.ndarray) -> torch.Tensor:
    """Their preprocessing (run_drag_diffusion.py ``preprocess_image``): x / 127.5 - 1, (1, 3, H, W)."""
    return (torch.from_numpy(np.array(image)).float() / 127.5 - 1).permute(2, 0, 1)[None]


def run_ours(model_dir: Path, image: np.ndarray, mask: np.ndarray | None, points, config) -> Recorder:
    pipe = DragPipeline.from_pretrained(str(model_dir), device="cpu")
    flag = {"on": False}
    rec = Recorder(lambda module, kwargs: flag["on"])
    override = pipe.block_output_override

    @contextlib.contextmanager
    def watched(block, value):  # our override, flagged while entered
        with override(block, value):
            flag["on"] = True
            try:
                yield
            finally:
                flag["on"] = False

    def tracked(features, vectors, handles, cfg):
        out = track(features, vectors, handles, cfg)
        rec.tracked(out.tolist())
        return out

    pipe.block_output_override = watched
    # Their pixels fed to our encoder too (diffusers' 2 (x / 255) - 1 differs in the last bit).
    pipe.hooks = DragHooks(track=tracked, pixels=lambda im: pixels(im.convert("RGB")).to(pipe.device))
    with recording(pipe.unet, rec):
        result = pipe(Image.fromarray(image), points[0::2], points[1::2], None if mask is None else mask > 0,
                      config=config, progress=False)
    rec.final_latent = result.latents.detach().clone()
    return rec


def import_reference(repo: Path) -> types.SimpleNamespace:
    """Their drag_pipeline and utils/drag_utils, with the CPU shims of the docstring."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # noqa: E731 (CPU run)
    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = None
    absent = "torch.utils.tensorboard" not in sys.modules
    if absent:
        sys.modules["torch.utils.tensorboard"] = board
    sys.path.insert(0, str(repo))
    try:
        pipeline = importlib.import_module("drag_pipeline")
        utils = importlib.import_module("utils.drag_utils")
    finally:
        if absent:  # nothing else must see the stub
            del sys.modules["torch.utils.tensorboard"]
    return types.SimpleNamespace(pipeline=pipeline, utils=utils)


@contextlib.contextmanager
def watching_tracking(ref, rec: Recorder, config):
    """Wrap their ``point_tracking``: record the handles it returns, and run OUR tracker on THEIR
    inputs at every call (``rec.tracker_checks``: equal or not)."""
    original = ref.utils.point_tracking

    def tracked(F0, F1, handle_points, handle_points_init, args):
        init = torch.stack(handle_points_init)
        mine = track(F1, features_at(F0, init), torch.stack(handle_points).clone(), config)
        out = original(F0, F1, handle_points, handle_points_init, args)  # changes handle_points in place
        rec.tracker_checks.append(bool(torch.equal(mine, torch.stack(out))))
        rec.tracked([p.tolist() for p in out])
        return out

    ref.utils.point_tracking = tracked
    try:
        yield
    finally:
        ref.utils.point_tracking = original


def run_reference(ref, model_dir: Path, image: np.ndarray, mask: np.ndarray | None, points, config,
                  perturb: float = 0.0) -> Recorder:
    """Their benchmark ``run_drag`` (run_drag_diffusion.py:54-174) step by step, without LoRA and
    saving; ``perturb`` is added to the input pixels in [-1, 1] (the noise-floor run)."""
    from diffusers import DDIMScheduler

    rec = Recorder(lambda module, kwargs: kwargs.get("h_sample") is not None)
    h, w = image.shape[:2]
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    model = ref.pipeline.DragPipeline.from_pretrained(str(model_dir), scheduler=scheduler)
    model.modify_unet_forward()
    model.unet.set_default_attn_processor()
    steps, actual = 50, round(0.7 * 50)
    args = types.SimpleNamespace(prompt="", unet_feature_idx=[3], sup_res_h=int(0.5 * h), sup_res_w=int(0.5 * w),
                                 guidance_scale=1.0, **reference_args(config))
    m = torch.from_numpy(np.zeros((h, w), np.uint8) if mask is None else mask).float() / 255.0
    m[m > 0.0] = 1.0
    m = torch.nn.functional.interpolate(m[None, None], (args.sup_res_h, args.sup_res_w), mode="nearest")
    handles, targets = [], []
    for i, (x, y) in enumerate(points):
        p = torch.round(torch.tensor([y / h * args.sup_res_h, x / w * args.sup_res_w]))
        (handles if i % 2 == 0 else targets).append(p)
    to_image = model.latent2image

    def decoded(latents, *a, **k):
        rec.final_latent = latents[1:].detach().clone()  # their output row 1 (run_drag_diffusion.py:174)
        return to_image(latents, *a, **k)

    model.latent2image = decoded
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull), \
            recording(model.unet, rec), watching_tracking(ref, rec, config):
        code = model.invert(pixels(image) + perturb, args.prompt, guidance_scale=1.0,
                            num_inference_steps=steps, num_actual_inference_steps=actual)
        code_orig = copy.deepcopy(code)
        model.scheduler.set_timesteps(steps)
        t = model.scheduler.timesteps[steps - actual]
        updated, h_feature, _ = ref.utils.drag_diffusion_update(model, code, t, handles, targets, m, args)
        model(prompt=args.prompt, h_feature=h_feature, end_step=args.end_step, batch_size=2,
              latents=torch.cat([code_orig, updated]), guidance_scale=1.0, num_inference_steps=steps,
              num_actual_inference_steps=actual)
    return rec


def summarize(ours: Recorder, ref: Recorder) -> dict:
    """Where two runs agree: event order (with the substitution of every pass), optimiser steps,
    trackings, the first denoising step's bottleneck, the final latent."""
    def shape(events):
        return [e[0] if e[0] in ("S", "T") else e for e in events]

    t_ours, t_ref = ours.trackings(), ref.trackings()
    first = next((i for i, (a, b) in enumerate(zip(t_ours, t_ref)) if a != b), None)
    if first is None and len(t_ours) != len(t_ref):
        first = min(len(t_ours), len(t_ref))
    passes = [e for e in ref.events if e[0] in ("F", "N")]
    diff = (ours.final_latent - ref.final_latent).abs()
    return {
        "event_order_equal": shape(ours.events) == shape(ref.events),
        "events": {"ours": len(ours.events), "reference": len(ref.events)},
        "passes_reference": {f"{k}{'+h' if s else ''}": passes.count((k, s)) for k in ("F", "N") for s in (True, False)},
        "optimiser_steps": {"ours": shape(ours.events).count("S"), "reference": shape(ref.events).count("S")},
        "trackings": {"ours": len(t_ours), "reference": len(t_ref)},
        "trackings_equal": first is None,
        "first_tracking_difference": first,
        "final_handles": {"ours": t_ours[-1] if t_ours else None, "reference": t_ref[-1] if t_ref else None},
        "h_star_max_abs_diff": float((ours.h_star - ref.h_star).abs().max()),
        "h_star_max_abs": float(ref.h_star.abs().max()),
        "final_latent_max_abs_diff": float(diff.max()),
        "final_latent_max_abs": float(ref.final_latent.abs().max()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, required=True, help="checkout of haofengl/DragNoise")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--steps", type=int, default=None, help="both runs' optimiser steps (default: the benchmark's 80)")
    ap.add_argument("--end-step", type=int, default=0, help="both runs' end_step / propagation_end_step (default 0)")
    ap.add_argument("--no-mask", action="store_true", help="no mask (theirs: zeros; ours: None)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also run the authors' code on an input moved by 1e-6 and compare it with itself")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args(argv)
    if not (args.reference_repo / "utils" / "drag_utils.py").is_file():
        ap.error(f"--reference-repo {args.reference_repo}: no utils/drag_utils.py there")
    torch.set_num_threads(1)
    overrides = dict(resolution=256, lora_steps=0, propagation_end_step=args.end_step)
    if args.steps is not None:
        overrides["track_per_step"] = args.steps
    config = get_preset("dragnoise", **overrides)
    ref = import_reference(args.reference_repo)
    report = {"config": config.to_dict(), "reference_args": reference_args(config), "no_mask": args.no_mask,
              "cases": {}}
    with tempfile.TemporaryDirectory(prefix="gooddrag-parity-") as tmp:
        model_dir = save_tiny_pipeline(Path(tmp) / "tiny-sd")
        image, mask = make_inputs()
        mask = None if args.no_mask else mask
        for name in args.cases.split(","):
            points = CASES[name]
            ours = run_ours(model_dir, image, mask, points, config)
            theirs = run_reference(ref, model_dir, image, mask, points, config)
            checks = theirs.tracker_checks
            report["cases"][name] = {"points_xy": points} | summarize(ours, theirs) | {
                "our_tracker_on_their_inputs": f"{sum(checks)} of {len(checks)} equal"}
            if args.noise_floor:  # theirs against theirs with the input moved by 1e-6
                moved = run_reference(ref, model_dir, image, mask, points, config, perturb=1e-6)
                report["cases"][name]["noise_floor"] = summarize(moved, theirs)
            print(name, json.dumps(report["cases"][name]), flush=True)  # a script's report, not library code
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
