"""Parity run: FreeDrag's authors' code and our ``freedrag`` method on identical weights and inputs.

Runs the authors' ``freedrag_update`` (LPengYang/FreeDrag, folder ``FreeDrag--diffusion--version``,
checked out by the user; nothing of it is copied here, it is imported from ``--reference-repo`` at
run time) step by step as their ``run_drag`` (utils/ui_utils.py) calls it: ``DragPipeline.invert``,
``freedrag_update``, ``MutualSelfAttentionControl`` and the pipeline's sampling. Beside it runs our
``DragPipeline`` with the ``freedrag`` preset through the public API. Both use the tiny random model
(gooddrag.models.tiny), 256 x 256, fp32, CPU, no LoRA, the same input tensor and the UI's values
(inversion 0.7, lam 10, lr 0.01, l_expected 1, d_max 5, 300 steps) or, with ``--l-expected``, another
l_expected given to both (the tiny model's feature distances are ~0.2, so at 1 every search takes
the forward branch; 0.05 makes all three branches happen).

Recorded for both: the events (``F`` a forward pass with gradient, ``S`` an optimiser step, ``N`` a
batch-1 forward pass without gradient, ``B`` a batched DDIM step with whether mutual
self-attention was on, ``L`` a line search with the points it returned and each pair's branch:
``forward`` / ``stay`` / ``back`` / ``done``) and the final latent.

CPU shims for their code: ``Tensor.cuda`` a no-op (``get_text_embeddings``), a
``pytorch_lightning`` stub (their ui_utils imports it; not imported here), and a ``torchvision``
stub in place only while ``utils/freedrag_utils.py`` is imported (it imports
``torchvision.transforms`` and never uses it). ``torch.autocast("cuda")`` and
``torch.cuda.amp.GradScaler`` switch themselves off on a CPU. Their ``utils/attn_utils.py`` needs
``einops`` (``pip install einops`` in a separate venv, or PYTHONPATH to a folder holding it).

    git clone https://github.com/LPengYang/FreeDrag /tmp/FreeDrag
    python research/parity_freedrag.py --reference-repo /tmp/FreeDrag --noise-floor --json fd.json

Coordinates: points are (x, y) image pixels; searched points in the report are (row, col)
supervision-grid cells, as both implementations hold them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.machinery
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
from gooddrag.methods import freedrag  # noqa: E402
from gooddrag.methods.base import DragHooks  # noqa: E402
from gooddrag.models.attention import MutualSelfAttentionProcessor  # noqa: E402
from gooddrag.models.tiny import save_tiny_pipeline  # noqa: E402

FOLDER = "FreeDrag--diffusion--version"
START_LAYER = 7
"""The tiny UNet has 10 self-attention layers: mutual attention in its last 3 (SD1.5's 10 of 16)."""

CASES = {
    # (x, y) image pixels on the 256 x 256 test image (supervision grid 128 x 128); every window
    # a search can read (up to 2 d_max + r = 14 cells around a point) stays inside the grid.
    "short": [[100, 128], [116, 128]],  # 8 cells: two forward searches
    "long": [[70, 128], [170, 128]],  # 50 cells
    "two": [[90, 100], [120, 130], [160, 170], [140, 150]],  # two pairs, diagonal
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


def branches(loss_ini, loss_end, done, l_expected: float) -> list[str]:
    """Which branch of the line search each pair takes (the tests of their ``get_each_point``)."""
    out = []
    for i, e, d in zip(loss_ini.tolist(), loss_end.tolist(), done.tolist()):
        matched = bool(torch.tensor(e) < 0.5 * l_expected)  # compared in float32, as theirs
        out.append("done" if d else "forward" if matched else "stay" if e < i else "back")
    return out


class Recorder:
    """Events of one run, from hooks on the UNet, the optimisers and the line search."""

    def __init__(self):
        self.events: list[tuple] = []
        self.final_latent: torch.Tensor | None = None
        self.checks: dict[str, list] = {"line_search": [], "template_weight": [], "done_test": []}

    def unet_pre_hook(self, mutual_on):
        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            if sample.requires_grad and torch.is_grad_enabled():
                self.events.append(("F",))
            elif sample.shape[0] == 2:
                self.events.append(("B", bool(mutual_on(module))))
            else:
                self.events.append(("N",))
        return hook

    def step_hook(self, optimizer, args, kwargs):
        self.events.append(("S",))

    def searched(self, points: torch.Tensor, kinds: list[str], loss_ini: torch.Tensor, loss_end: torch.Tensor):
        losses = {"loss_ini": loss_ini.detach().tolist(), "loss_end": loss_end.detach().tolist()}
        self.events.append(("L", points.detach().clone().tolist(), kinds, losses))

    def searches(self) -> list[tuple]:
        return [e for e in self.events if e[0] == "L"]


@contextlib.contextmanager
def recording(unet, recorder: Recorder, mutual_on):
    h1 = unet.register_forward_pre_hook(recorder.unet_pre_hook(mutual_on), with_kwargs=True)
    h2 = register_optimizer_step_post_hook(recorder.step_hook)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def reference_args(config) -> dict:
    """Their ``args`` fields (ui_utils.py:219-224) from our config."""
    return dict(l_expected=config.l_expected, d_max=config.d_max, lr=config.lr, lam=config.lam,
                max_step=config.max_drag_steps)


def pixels(image: np.ndarray) -> torch.Tensor:
    """Their preprocessing (ui_utils.py ``preprocess_image``): x / 127.5 - 1, (1, 3, H, W)."""
    return (torch.from_numpy(np.array(image)).float() / 127.5 - 1).permute(2, 0, 1)[None]


def run_ours(model_dir: Path, image: np.ndarray, mask: np.ndarray, points, config) -> Recorder:
    rec = Recorder()
    pipe = DragPipeline.from_pretrained(str(model_dir), device="cpu")

    def searched(features, templates, current, targets, loss_ini, loss_end, done, cfg):
        kinds = branches(loss_ini, loss_end, done, cfg.l_expected)
        out = freedrag.line_search(features, templates, current, targets, loss_ini, loss_end, done, cfg)
        rec.searched(out, kinds, loss_ini, loss_end)
        return out

    # Their pixels fed to our encoder too (diffusers' 2 (x / 255) - 1 differs in the last bit).
    pipe.hooks = DragHooks(line_search=searched, pixels=lambda im: pixels(im.convert("RGB")).to(pipe.device))

    def mutual_on(unet):
        return any(isinstance(p, MutualSelfAttentionProcessor) for p in unet.attn_processors.values())

    with recording(pipe.unet, rec, mutual_on):
        result = pipe(Image.fromarray(image), points[0::2], points[1::2], mask > 0, config=config, progress=False)
    rec.final_latent = result.latents.detach().clone()
    return rec


def import_reference(repo: Path) -> types.SimpleNamespace:
    """Their drag_pipeline, freedrag_utils and attn_utils, with the CPU shims of the docstring."""
    sys.modules.setdefault("pytorch_lightning", types.SimpleNamespace(seed_everything=lambda seed: None))
    torch.Tensor.cuda = lambda self, *a, **k: self  # noqa: E731 (CPU run)
    sys.path.insert(0, str(repo))
    pipeline = importlib.import_module("drag_pipeline")
    attn = importlib.import_module("utils.attn_utils")
    stub = types.ModuleType("torchvision")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    stub.transforms = types.ModuleType("torchvision.transforms")
    absent = "torchvision" not in sys.modules
    if absent:
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
    try:
        utils = importlib.import_module("utils.freedrag_utils")
    finally:
        if absent:  # nothing else must see the stub
            del sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    return types.SimpleNamespace(pipeline=pipeline, utils=utils, attn=attn)


@contextlib.contextmanager
def watching_functions(ref, rec: Recorder, config):
    """Wrap their ``get_current_target`` (line search), ``get_xishu`` (template weight) and
    ``update_signs`` (done test): record each search, and run OUR function on THEIR inputs at every
    call, keeping the largest difference (``rec.checks``), which no drift between the runs can blur."""
    search, xishu, signs_fn = ref.utils.get_current_target, ref.utils.get_xishu, ref.utils.update_signs
    checks = rec.checks

    def searched(signs, current, target, L, features, d_max, templates, loss_ini, loss_end, *rest):
        done = signs == 1
        mine = freedrag.line_search(features, torch.stack(templates).permute(0, 2, 1), current.clone(), target,
                                    loss_ini.detach(), loss_end.detach(), done, config)  # (N, 81, C) -> (N, C, 81)
        kinds = branches(loss_ini, loss_end, done, L)
        out = search(signs, current, target, L, features, d_max, templates, loss_ini, loss_end, *rest)
        checks["line_search"].append(float((mine - out).abs().max()))
        rec.searched(out, kinds, loss_ini, loss_end)
        return out

    def weighted(loss, a, b):
        out = xishu(loss, a, b)
        mine = freedrag.update_templates(torch.zeros(1, 1, 1), torch.ones(1, 1, 1), loss.reshape(1),
                                         torch.tensor([False]), config.l_expected)  # = the weight w
        checks["template_weight"].append(float((mine.reshape(()) - out).abs()))
        return out

    def signed(signs, current, target, loss, threshold_d, threshold_l):
        mine = freedrag.pairs_done(current, target, loss, config.stop_distance, config.l_expected)
        out = signs_fn(signs, current, target, loss, threshold_d, threshold_l)
        checks["done_test"].append(bool(torch.equal(mine, out == 1)))
        return out

    ref.utils.get_current_target, ref.utils.get_xishu, ref.utils.update_signs = searched, weighted, signed
    try:
        yield
    finally:
        ref.utils.get_current_target, ref.utils.get_xishu, ref.utils.update_signs = search, xishu, signs_fn


def run_reference(ref, model_dir: Path, image: np.ndarray, mask: np.ndarray, points, config,
                  perturb: float = 0.0) -> Recorder:
    """Their ``run_drag`` (ui_utils.py:172-298) step by step, without gradio, LoRA and saving;
    ``perturb`` is added to the input pixels in [-1, 1] (the noise-floor run)."""
    from diffusers import DDIMScheduler

    rec = Recorder()
    h, w = image.shape[:2]
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    model = ref.pipeline.DragPipeline.from_pretrained(str(model_dir), scheduler=scheduler)
    model.modify_unet_forward()
    model.unet.set_default_attn_processor()
    steps, actual = 50, round(0.7 * 50)
    args = types.SimpleNamespace(prompt="", unet_feature_idx=[3], sup_res_h=int(0.5 * h), sup_res_w=int(0.5 * w),
                                 guidance_scale=1.0, **reference_args(config))
    m = torch.from_numpy(mask).float() / 255.0
    m[m > 0.0] = 1.0
    m = torch.nn.functional.interpolate(m[None, None], (args.sup_res_h, args.sup_res_w), mode="nearest")
    handles, targets = [], []
    for i, (x, y) in enumerate(points):
        p = torch.round(torch.tensor([y / h * args.sup_res_h, x / w * args.sup_res_w]))
        (handles if i % 2 == 0 else targets).append(p)
    to_image = model.latent2image

    def decoded(latents, *a, **k):
        rec.final_latent = latents[-1:].detach().clone()  # [source, edited]: keep the edit
        return to_image(latents, *a, **k)

    model.latent2image = decoded

    def mutual_on(unet):  # their editor replaces the attention modules' ``forward``
        return any("forward" in vars(mod) for mod in unet.modules() if type(mod).__name__ == "Attention")

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull), \
            recording(model.unet, rec, mutual_on), watching_functions(ref, rec, config):
        code = model.invert(pixels(image) + perturb, args.prompt, guidance_scale=1.0,
                            num_inference_steps=steps, num_actual_inference_steps=actual)
        code_orig = copy.deepcopy(code)
        model.scheduler.set_timesteps(steps)
        t = model.scheduler.timesteps[steps - actual]
        updated = ref.utils.freedrag_update(model, code, t, handles, targets, m, args)
        editor = ref.attn.MutualSelfAttentionControl(start_step=0, start_layer=START_LAYER, total_steps=steps,
                                                     guidance_scale=1.0)
        ref.attn.register_attention_editor_diffusers(model, editor, attn_processor="attn_proc")
        model(prompt=args.prompt, batch_size=2, latents=torch.cat([code_orig, updated.detach()]),
              guidance_scale=1.0, num_inference_steps=steps, num_actual_inference_steps=actual)
    return rec


def summarize(ours: Recorder, ref: Recorder, tolerance: float = 1e-3) -> dict:
    """Where two runs agree: event order, line searches (points within ``tolerance`` cells, branches),
    optimiser steps, mutual attention per DDIM step, final latent."""
    def shape(events):
        return [e[0] for e in events]

    s_ours, s_ref = ours.searches(), ref.searches()
    gaps = [float(np.abs(np.subtract(a[1], b[1])).max()) for a, b in zip(s_ours, s_ref)]
    first = next((i for i, (g, a, b) in enumerate(zip(gaps, s_ours, s_ref)) if g > tolerance or a[2] != b[2]), None)
    agree = gaps[:first] if first is not None else gaps
    kinds = [k for e in s_ref for k in e[2]]
    diff = (ours.final_latent - ref.final_latent).abs()
    return {
        "event_order_equal": shape(ours.events) == shape(ref.events),
        "events": {"ours": len(ours.events), "reference": len(ref.events)},
        "optimiser_steps": {"ours": shape(ours.events).count("S"), "reference": shape(ref.events).count("S")},
        "searches": {"ours": len(s_ours), "reference": len(s_ref)},
        "searches_equal": first is None and len(s_ours) == len(s_ref),
        "first_search_difference": first,
        "search_points_max_abs_diff_while_equal": max(agree, default=0.0),
        "branches_reference": {k: kinds.count(k) for k in ("forward", "stay", "back", "done")},
        "final_points": {"ours": s_ours[-1][1] if s_ours else None, "reference": s_ref[-1][1] if s_ref else None},
        # the first differing search: its points, branches and the losses its decisions read
        "at_first_difference": None if first is None or first >= min(len(s_ours), len(s_ref)) else {
            "ours": s_ours[first][1:], "reference": s_ref[first][1:]},
        "mutual_attention_per_step_equal": [e[1] for e in ours.events if e[0] == "B"]
        == [e[1] for e in ref.events if e[0] == "B"],
        "final_latent_max_abs_diff": float(diff.max()),
        "final_latent_max_abs": float(ref.final_latent.abs().max()),
    }


def checked(ref: Recorder) -> dict:
    """Our line search, template weight and done test run on their inputs: how far from theirs."""
    c = ref.checks
    return {"line_searches": len(c["line_search"]), "line_search_max_abs_diff": max(c["line_search"], default=0.0),
            "template_weights": len(c["template_weight"]),
            "template_weight_max_abs_diff": max(c["template_weight"], default=0.0),
            "done_tests_equal": f'{sum(c["done_test"])} of {len(c["done_test"])}'}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, required=True,
                    help=f"checkout of LPengYang/FreeDrag (or its {FOLDER} folder)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--l-expected", type=float, default=None, help="both runs' l_expected (default: the UI's 1)")
    ap.add_argument("--max-steps", type=int, default=None, help="both runs' Adam budget (default: the UI's 300)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also run the authors' code on an input moved by 1e-6 and compare it with itself")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args(argv)
    repo = args.reference_repo / FOLDER if (args.reference_repo / FOLDER).is_dir() else args.reference_repo
    if not (repo / "utils" / "freedrag_utils.py").is_file():
        ap.error(f"--reference-repo {args.reference_repo}: no {FOLDER}/utils/freedrag_utils.py there")
    torch.set_num_threads(1)
    overrides = dict(resolution=256, lora_steps=0, mutual_attention_start_layer=START_LAYER)
    if args.l_expected is not None:
        overrides["l_expected"] = args.l_expected
    if args.max_steps is not None:
        overrides["max_drag_steps"] = args.max_steps
    config = get_preset("freedrag", **overrides)
    ref = import_reference(repo)
    report = {"config": config.to_dict(), "reference_args": reference_args(config), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="gooddrag-parity-") as tmp:
        model_dir = save_tiny_pipeline(Path(tmp) / "tiny-sd")
        image, mask = make_inputs()
        for name in args.cases.split(","):
            points = CASES[name]
            ours = run_ours(model_dir, image, mask, points, config)
            theirs = run_reference(ref, model_dir, image, mask, points, config)
            report["cases"][name] = {"points_xy": points} | summarize(ours, theirs) | {
                "our_functions_on_their_inputs": checked(theirs)}
            if args.noise_floor:  # theirs against theirs with the input moved by 1e-6
                moved = run_reference(ref, model_dir, image, mask, points, config, perturb=1e-6)
                report["cases"][name]["noise_floor"] = summarize(moved, theirs)
            print(name, json.dumps(report["cases"][name]), flush=True)  # a script's report, not library code
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
