"""Tests that fail when the method breaks, on the shipped shapes-64 model (exact ground truth).

The random tiny model cannot tell a working drag from a broken one; shapes-64 can, in seconds:
GoodDrag must move the object and keep the outside of the mask, the background term must be what
keeps the outside, mutual self-attention must act, and the LoRA's seed must matter.

Every bound below is set from a measured value with a margin; the measured values are those of
tests/golden/behaviour.json, which ``python -m tests.golden.regenerate`` rewrites (one command,
with the golden values). After a change of the engine, rerun it, read the diff of behaviour.json
and move a bound only when the change is meant (and say so in the commit).

The runs (tests/golden/cases.py): shapes-gooddrag preset as shipped (LoRA 70 steps x 4), LoRA
seed 0, cases make_case(0, 64, "single") and make_case(3, 64, "multi_point"). Each case trains
its LoRA once; the other runs of the case reuse it from the cache (the LoRA's settings are the
same). About 35 s on one torch thread.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gooddrag.models import lora
from gooddrag.shapes.benchmark import load_shapes_pipeline
from tests.golden import cases
from tests.helpers import POINTS, make_image, make_mask, tiny_config
from tests.test_golden import assert_matches_golden, load_golden

# ---------------------------------------------------------------- the bounds
# (case -> bound; the comment quotes tests/golden/behaviour.json as measured at git 69d3293, after
# the P1 parity change; before it, at 98433af, in brackets)
MAX_RELATIVE_ERROR = {
    "single-0": 0.40,  # measured 0.105 [0.179, the gooddrag demo]; no drag at all leaves 1.00
    "multi_point-3": 0.40,  # measured 0.110 [0.110]
}
MIN_PSNR_OUTSIDE_MASK = {
    "single-0": 30.0,  # dB; measured 33.17 [33.59]; without the background term 20.31 [20.45]
    "multi_point-3": 26.0,  # dB; measured 29.94 [29.20]; without the background term 20.33 [20.62]
}
MIN_BACKGROUND_TERM_GAIN_DB = 5.0
"""PSNR outside the mask with lam = 0.1 minus with lam = 0: measured 12.87 [13.14] (single-0),
9.62 [8.58] (multi_point-3)."""
MIN_MUTUAL_ATTENTION_DIFFERENCE = 0.05
"""Mean |difference| (0..255 levels) between the result with and without mutual self-attention:
measured 0.180 [0.209] (single-0); 0 means it never acted."""


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory):
    """``get(case, variant)`` runs an edit once per module; a case's runs share one LoRA cache."""
    pipe = load_shapes_pipeline()
    root = tmp_path_factory.mktemp("behaviour-lora")
    done: dict = {}

    def get(name: str, variant: str):
        if (name, variant) not in done:
            case = cases.shapes_case(name)
            run = cases.shapes_run(pipe, case, variant, root / name)
            done[name, variant] = (run, cases.shapes_scores(run, case))
        return done[name, variant]

    return get


@pytest.mark.parametrize("name", sorted(MAX_RELATIVE_ERROR))
def test_gooddrag_moves_the_object_and_keeps_the_outside(shapes_runs, name):
    run, scores = shapes_runs(name, "gooddrag")
    assert run.result.lora["source"] == "trained"
    assert scores["relative_error"] < MAX_RELATIVE_ERROR[name], scores
    assert scores["psnr_outside_mask"] > MIN_PSNR_OUTSIDE_MASK[name], scores


@pytest.mark.parametrize("name", sorted(MAX_RELATIVE_ERROR))
def test_without_the_background_term_the_outside_is_lost(shapes_runs, name):
    _, with_term = shapes_runs(name, "gooddrag")
    run, without = shapes_runs(name, "lam0")
    assert run.result.config.lam == 0 and run.result.lora["source"] == "cache"
    gain = with_term["psnr_outside_mask"] - without["psnr_outside_mask"]
    assert gain > MIN_BACKGROUND_TERM_GAIN_DB, (with_term, without)


def test_mutual_self_attention_changes_the_result(shapes_runs):
    on, _ = shapes_runs("single-0", "gooddrag")
    off, _ = shapes_runs("single-0", "no_mutual")
    assert off.result.lora["source"] == "cache"
    assert cases.mean_abs_difference(on, off) > MIN_MUTUAL_ATTENTION_DIFFERENCE


# ---------------------------------------------------------------- GoodDrag+
# Each part of shapes-gooddrag-plus removed in turn must show (measured values: behaviour.json).
MIN_PLUS_IOU_GAIN = 0.10
"""Object IoU with the answer of shapes-gooddrag-plus minus the faithful preset's: measured 0.913 -
0.584 = 0.33 (single-0), 0.974 - 0.803 = 0.17 (multi_point-3). (Shape PSNR gains 1.7 and 11.8 dB:
single-0's GoodDrag+ copies a little of the two objects behind the ellipse into the place it left,
docs/benchmarks.md.)"""
MAX_PLUS_STEP_FRACTION = 0.6
"""single-0: GoodDrag+'s optimiser steps / GoodDrag's, measured 0 / 150: the image warp does the move."""
MIN_FILL_GAIN_DB = 0.4
"""The latent warp (``latent_warp``, the earlier start of GoodDrag+, still an option): PSNR in the mask
with the vacated cells filled (noise) minus with them kept (the object's remnant): measured 0.91
(single-0, as before the image warp became the preset's start)."""
MAX_PLUS_HANDLE_DISTANCE_PX = 1.5
"""Final tracked handle to target: sub-pixel tracking ends within a pixel (demo scene over LoRA
seeds 0-9 and 42 with the latent-warp GoodDrag+: 0.4-0.9 px, docs/benchmarks.md)."""
TURN_CASE = "rotate-7"
MIN_TURN_IOU = 0.85
"""rotate-7 (a 15-45 degree turn, handles moved 2-5 px): GoodDrag+'s object IoU with the answer,
measured 0.935; with the pairs blended as translations 0.876."""
MIN_TURN_PSNR_GAIN_DB = 2.0
"""PSNR in the mask, fitted map minus translation blend: measured 28.27 - 23.86 = 4.4 dB."""
MIN_TURN_POINT_ERROR_GAIN = 0.05
"""Per-point error (a fraction of the drag), translation blend minus fitted map: measured 0.240 - 0.126."""


@pytest.mark.parametrize("name", sorted(MAX_RELATIVE_ERROR))
def test_gooddrag_plus_keeps_the_shape_with_the_warp(shapes_runs, name):
    """Without the warp GoodDrag+ is GoodDrag with sub-pixel tracking: many more steps, a torn shape."""
    faithful, f = shapes_runs(name, "gooddrag")
    plus, p = shapes_runs(name, "plus")
    assert plus.result.config.image_warp and plus.result.lora["source"] == "cache"
    assert p["relative_error"] < MAX_RELATIVE_ERROR[name] and p["psnr_outside_mask"] > MIN_PSNR_OUTSIDE_MASK[name]
    assert p["iou"] - f["iou"] > MIN_PLUS_IOU_GAIN, (p, f)
    if name == "single-0":
        assert p["drag_steps"] <= MAX_PLUS_STEP_FRACTION * f["drag_steps"], (p, f)


def test_gooddrag_plus_follows_a_turn_not_a_blend_of_translations(shapes_runs):
    """The fitted map of each mask region (warp_field "affine") against the pairs' displacements
    blended as translations (the field GoodDrag+ used before): the turn must show."""
    _, fitted = shapes_runs(TURN_CASE, "plus")
    blend_run, blended = shapes_runs(TURN_CASE, "plus_blend")
    assert blend_run.result.config.warp_field == "translations"
    assert fitted["iou"] > MIN_TURN_IOU, (fitted, blended)
    assert fitted["psnr_in_mask"] - blended["psnr_in_mask"] > MIN_TURN_PSNR_GAIN_DB, (fitted, blended)
    assert blended["relative_error"] - fitted["relative_error"] > MIN_TURN_POINT_ERROR_GAIN, (fitted, blended)


def test_the_latent_warp_fills_what_it_leaves_behind(shapes_runs):
    _, filled = shapes_runs("single-0", "plus_latent")
    kept_run, kept = shapes_runs("single-0", "plus_latent_keep")
    assert kept_run.result.config.latent_warp and not kept_run.result.config.image_warp
    assert filled["psnr_in_mask"] - kept["psnr_in_mask"] > MIN_FILL_GAIN_DB, (filled, kept)


def test_gooddrag_plus_tracks_to_a_fraction_of_a_cell(shapes_runs):
    """Sub-pixel tracking: the final handles are not whole supervision cells (1 px here), and
    within a pixel or so of their targets."""
    for name in MAX_RELATIVE_ERROR:
        run, _ = shapes_runs(name, "plus")
        handles = np.asarray(run.result.handle_points)
        assert not np.allclose(handles, np.round(handles)), handles
        dist = np.linalg.norm(handles - np.asarray(run.result.target_points), axis=1)
        assert np.all(dist < MAX_PLUS_HANDLE_DISTANCE_PX), dist


FREEDRAG_MAX_RELATIVE_ERROR = 0.6
"""single-0, shapes-freedrag (l_expected 0.1, tuned on seeds 100/200) with the LoRA GoodDrag trained
for the case: measured 0.376 (2026-12-07); with the authors' l_expected 1.0 0.989, the object stays
(its line search counts every pair matched at once)."""


def test_freedrag_moves_the_object_with_its_shapes_threshold(shapes_runs, tmp_path):
    """FreeDrag through the method seam on shapes-64: its line search and Adam steps move the object.
    With the line search removed (``DragHooks.line_search`` keeping the points where they are: checked
    once, 2026-12-07) the object stays: 12.0 px from its place, IoU 0."""
    import torch
    from PIL import Image

    from gooddrag.methods.config import get_preset
    from gooddrag.shapes.metrics import case_metrics

    gooddrag_run, _ = shapes_runs("single-0", "gooddrag")
    case = cases.shapes_case("single-0")
    result = load_shapes_pipeline()(
        Image.fromarray(case.image), case.handle_points, case.target_points, mask=case.mask,
        config=get_preset("shapes-freedrag", seed=0), generator=torch.Generator().manual_seed(0),
        lora_path=gooddrag_run.result.lora["path"], progress=False)
    scores = case_metrics(np.asarray(result.image.convert("RGB")), case)
    assert result.stats.drag_steps > 0 and scores["relative_error"] < FREEDRAG_MAX_RELATIVE_ERROR, scores


def test_shapes_golden(shapes_runs):
    """The shapes-64 run's drag counts, stop reason and final handles exactly, its latent corner and
    sums within the spread of kernel sets (tests/golden/shapes.json, cases.GOLDEN_TOLERANCES)."""
    run, _ = shapes_runs(*cases.SHAPES_GOLDEN)
    want = load_golden("shapes.json")
    assert want.pop("run") == "/".join(cases.SHAPES_GOLDEN)
    assert_matches_golden(run.golden(), want, "shapes.json", cases.GOLDEN_TOLERANCES["shapes.json"])


# --------------------------------------------------------------------- seeds
# On the tiny model (fast): the seed only acts through the LoRA (its initial weights, noise,
# timesteps), so each run trains one (2 steps).
def _tiny_edit(pipe, seed: int, cache_dir):
    cfg = tiny_config("gooddrag", **(cases.TINY_RUNS["gooddrag"] | {"seed": seed}))
    return cases.edit(pipe, make_image(), [POINTS[0]], [POINTS[1]], make_mask(), cfg, cache_dir)


def test_same_seed_same_image_each_time_it_trains(tiny_pipe, tmp_path):
    a = _tiny_edit(tiny_pipe, 5, tmp_path / "cache-a")
    b = _tiny_edit(tiny_pipe, 5, tmp_path / "cache-b")  # a fresh cache: trains again
    assert a.result.lora["source"] == b.result.lora["source"] == "trained"
    assert np.array_equal(np.asarray(a.result.image), np.asarray(b.result.image))
    assert np.array_equal(a.result.handle_points, b.result.handle_points)


def test_different_seeds_different_images_even_with_a_shared_cache(tiny_pipe, tmp_path):
    a = _tiny_edit(tiny_pipe, 0, tmp_path / "cache")
    b = _tiny_edit(tiny_pipe, 1, tmp_path / "cache")  # same cache: a key without the seed would reuse a's LoRA
    assert a.result.lora["source"] == b.result.lora["source"] == "trained"
    assert a.result.lora["key"] != b.result.lora["key"]
    diff = np.abs(np.asarray(a.result.image, float) - np.asarray(b.result.image, float)).mean()
    assert diff > 1.0  # measured 25.7 levels


# Every DragConfig field the LoRA depends on, with another value. Anything else in DragConfig
# (drag, denoising, tracking settings) must not change the key, so one LoRA serves them all.
LORA_FIELDS = {"lora_steps": 3, "lora_rank": 8, "lora_lr": 1e-4, "lora_batch_size": 2, "lora_weight_decay": 0.0,
               "seed": 43}
NOT_LORA_FIELDS = {"lam": 0.5, "lr": 0.05, "r1": 1, "r2": 5, "beta": 1.0, "drag_end_step": 1, "track_per_step": 3,
                   "max_drag_per_track": 1, "mutual_attention_start_layer": 3, "stop_distance": 1.0,
                   "max_track_no_change": 0, "information_preserving": False}


def _key(config, prompt=""):
    return lora.lora_cache_key("img", "model", lora.lora_settings(config, prompt))


def test_lora_cache_key_changes_with_every_lora_setting():
    base = tiny_config("gooddrag", lora_steps=2, lora_batch_size=1, seed=42)
    for name, value in LORA_FIELDS.items():
        assert getattr(base, name) != value, name
        assert _key(dataclasses.replace(base, **{name: value})) != _key(base), f"{name} is not in the LoRA cache key"
    assert _key(base, "a cat") != _key(base)  # the prompt
    for name, value in NOT_LORA_FIELDS.items():
        assert _key(dataclasses.replace(base, **{name: value})) == _key(base), f"{name} needlessly in the key"
    # every entry of lora_settings counts
    settings = lora.lora_settings(base, "")
    for name, value in settings.items():
        changed = settings | {name: [value, "other"]}
        assert lora.lora_cache_key("img", "model", changed) != lora.lora_cache_key("img", "model", settings), name


def test_lora_cache_key_changes_with_the_working_size(tiny_pipe, tmp_path):
    keys = []
    for resolution in (128, 96):
        cfg = tiny_config("gooddrag", lora_steps=1, lora_batch_size=1, resolution=resolution)
        inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
        try:
            keys.append(tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path, progress=False)["key"])
        finally:
            lora.remove_lora(tiny_pipe.unet)
    assert keys[0] != keys[1]
