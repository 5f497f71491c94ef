"""FreeDrag (gooddrag.methods.freedrag): its line search and template update worked by hand on tiny
tensors, its config and presets, and end-to-end runs on the tiny model (counted events, the budget,
the line search's effect). Parity with the authors' code: research/parity_freedrag.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from gooddrag import GoodDragError
from gooddrag.methods import freedrag, presets
from gooddrag.methods.base import DragHooks
from gooddrag.methods.config import PRESETS, DragConfig, FreeDragConfig, get_preset
from gooddrag.methods.registry import METHODS
from gooddrag.models.attention import MutualSelfAttentionProcessor

from .helpers import POINTS, make_image, make_mask


# --------------------------------------------------------------------------------- hand-worked
def ramp(h: int = 16, w: int = 20) -> torch.Tensor:
    """(1, 1, h, w) features 0.25 x col: a window's mean |F - T| is 0.25 x its column offset."""
    return (0.25 * torch.arange(w, dtype=torch.float32)).expand(1, 1, h, w).clone()


def search_setup(points, **overrides):
    """A ramp, windows of radius 1, templates read at ``points`` (N, 2) (row, col); d_max 4 and 4
    search points: candidates at 1, 2, 3, 4 cells (exact binary fractions)."""
    cfg = get_preset("freedrag", d_max=4.0, search_points=4, window_radius=1, **overrides)
    features = ramp()
    points = torch.tensor(points, dtype=torch.float32)
    templates = freedrag.read_windows(features, points, freedrag.patch_offsets(1))
    return cfg, features, points, templates


def test_line_search_each_branch_by_hand():
    # four pairs at col 10, target col 14 (4 cells: one d_max step), one per branch; l_expected 0.6
    cfg, features, points, templates = search_setup([[3, 10], [6, 10], [9, 10], [12, 10]], l_expected=0.6)
    targets = points + torch.tensor([0.0, 4.0])
    loss_end = torch.tensor([0.1, 0.4, 0.4, 0.1])  # matched (< 0.3), not, not, matched
    loss_ini = torch.tensor([0.0, 0.5, 0.3, 0.0])  # pair 1 improving (0.4 < 0.5), pair 2 not
    done = torch.tensor([False, False, False, True])
    new = freedrag.line_search(features, templates, points, targets, loss_ini, loss_end, done, cfg)
    # forward: candidates at cols 11..14 have losses 0.25, 0.5, 0.75, 1.0: nearest 0.6 is col 12;
    # stay; back: to col 6 (one d_max step, the whole 4 cells), then cols 8, 10, 12, 14 (2 d_max = 8
    # cells, the whole way): losses 0.5, 0, 0.5, 1.0, the best is col 10; done: unchanged
    assert new.tolist() == [[3.0, 12.0], [6.0, 10.0], [9.0, 10.0], [12.0, 10.0]]


def test_line_search_forward_steps_at_most_d_max_and_picks_nearest_l_expected():
    cfg, features, points, templates = search_setup([[5, 2]], l_expected=0.9)
    targets = torch.tensor([[5.0, 18.0]])  # 16 cells away: the candidates span the next 4 only
    zero = torch.zeros(1)
    new = freedrag.line_search(features, templates, points, targets, zero, zero, torch.tensor([False]), cfg)
    assert new.tolist() == [[5.0, 6.0]]  # losses 0.25, 0.5, 0.75, 1.0: 1.0 is nearest 0.9
    far = dataclasses.replace(cfg, l_expected=0.2)
    new = freedrag.line_search(features, templates, points, targets, zero, zero, torch.tensor([False]), far)
    assert new.tolist() == [[5.0, 3.0]]  # 0.25 is nearest 0.2
    # the line search runs through hooks.line_search when given (default: freedrag.line_search)
    assert DragHooks().line_search is None


def test_template_update_by_hand():
    templates, windows = torch.zeros(3, 2, 4), torch.ones(3, 2, 4)
    loss_end = torch.tensor([0.2, 0.8, 5.0])
    done = torch.tensor([False, False, True])
    new = freedrag.update_templates(templates, windows, loss_end, done, l_expected=1.0)
    # w = 1 / (1 + exp(ln 9 / 0.6 x (loss - 0.2))): 0.5 at 0.2, 0.1 at 0.8; a done pair takes the window
    assert new[0].eq(0.5).all() and new[2].eq(1.0).all()
    torch.testing.assert_close(new[1], torch.full((2, 4), 0.1), rtol=0, atol=1e-6)
    # the template moves from where it was: w x window + (1 - w) x template
    moved = freedrag.update_templates(torch.full((1, 1, 1), 3.0), torch.ones(1, 1, 1), torch.tensor([0.2]),
                                      torch.tensor([False]), 1.0)
    assert moved.item() == 2.0


def test_done_losses_and_background_by_hand():
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[0.0, 1.5], [0.0, 2.0], [0.0, 1.0]])
    loss_end = torch.tensor([0.5, 0.1, 0.6])
    # within 2 cells and loss <= 0.5 l_expected (0.5 itself counts); 2.0 is not within; 0.6 too high
    assert freedrag.pairs_done(points, targets, loss_end, 2.0, 1.0).tolist() == [True, False, False]
    windows, templates = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    templates[1, 0] = 4.0  # pair 1: |1 - 4| on 4 of 12 cells, 1 on the other 8: mean 20 / 12
    torch.testing.assert_close(freedrag.pair_losses(windows, templates), torch.tensor([1.0, 20 / 12]))
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, :] = 1  # the top row may change
    x = torch.full((1, 4, 2, 2), 3.0)
    assert freedrag.background_mean(x, torch.ones_like(x), mask).item() == 1.0  # 2 on half the cells: a mean


# -------------------------------------------------------------------------------- config
def test_config_round_trips_through_json_as_its_own_class():
    cfg = get_preset("shapes-freedrag", l_expected=0.5, window_radius=2, seed=7)
    back = DragConfig.from_dict(json.loads(cfg.to_json()))
    assert type(back) is FreeDragConfig and back == cfg
    assert FreeDragConfig.from_dict(cfg.to_dict()) == cfg
    assert type(DragConfig.from_dict(PRESETS["gooddrag"].to_dict())) is DragConfig
    with pytest.raises(GoodDragError, match="takes a DragConfig, not a FreeDragConfig"):
        FreeDragConfig.from_dict(PRESETS["gooddrag"].to_dict())
    with pytest.raises(GoodDragError, match="unknown setting"):
        DragConfig.from_dict(PRESETS["gooddrag"].to_dict() | {"d_max": 5.0})


@pytest.mark.parametrize("bad, match", [
    ({"d_max": 0.0}, "d_max"), ({"l_expected": -1.0}, "l_expected"), ({"search_points": 0}, "search_points"),
    ({"steps_per_search": 0}, "steps_per_search"), ({"window_radius": -1}, "window_radius"),
    ({"drag_end_step": 2}, "drag_end_step"), ({"image_warp": True}, "image_warp"), ({"lr": 0.0}, "lr"),
])
def test_invalid_settings_are_refused(bad, match):
    with pytest.raises(GoodDragError, match=match):
        get_preset("freedrag", **bad)


def test_method_and_class_go_together():
    with pytest.raises(GoodDragError, match="takes a FreeDragConfig"):
        dataclasses.replace(PRESETS["dragdiffusion"], method="freedrag")
    with pytest.raises(GoodDragError, match="takes a DragConfig"):
        FreeDragConfig(method="gooddrag")
    with pytest.raises(GoodDragError, match="unknown setting"):
        get_preset("gooddrag", l_expected=1.0)


def test_presets_are_the_ui_values_and_their_translations():
    ui = PRESETS["freedrag"]
    assert ui == FreeDragConfig() and METHODS["freedrag"].faithful
    assert (ui.l_expected, ui.d_max, ui.window_radius, ui.search_points, ui.steps_per_search,
            ui.max_drag_steps) == (1.0, 5.0, 4, 10, 5, 300)
    assert (ui.lam, ui.lr, ui.inversion_steps, ui.lora_steps, ui.lora_lr, ui.stop_distance) == (10, 0.01, 35, 200,
                                                                                                  2e-4, 2.0)
    # shapes-64: the spatial translation, and l_expected tuned on the tuning seeds (config.py says how)
    assert PRESETS["shapes-freedrag"].l_expected == 0.1
    for family, changed in [("shapes", {"resolution", "sup_res_scale", "feature_block", "mutual_attention_start_layer",
                                        "stop_distance", "l_expected"}),
                            ("sdxl", {"resolution", "feature_block", "mutual_attention_start_layer"})]:
        other = PRESETS[presets.preset_name("freedrag", family)]
        assert {f.name for f in dataclasses.fields(ui) if getattr(ui, f.name) != getattr(other, f.name)} == changed
    assert presets.label("shapes-freedrag").startswith("FreeDrag, ")


# ---------------------------------------------------------------------------- end to end
def fd_config(**overrides) -> FreeDragConfig:
    """FreeDrag on the tiny model: 128 px, no LoRA, 10 DDIM steps (7 inverted), mutual layers 7.."""
    return get_preset("freedrag", **({"resolution": 128, "lora_steps": 0, "num_inference_steps": 10,
                                       "mutual_attention_start_layer": 7} | overrides))


def trace(pipe, config, **kw):
    """Run an edit; events in order: ``L`` a line search, ``F`` a forward pass with gradient, ``S`` an
    optimiser step, ``N`` a no-grad batch-1 forward pass, ``B+`` / ``B-`` a batched DDIM step with /
    without mutual self-attention."""
    events = []

    def on_forward(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if sample.requires_grad and torch.is_grad_enabled():
            events.append("F")
        elif sample.shape[0] == 2:
            mutual = any(isinstance(p, MutualSelfAttentionProcessor) for p in module.attn_processors.values())
            events.append("B+" if mutual else "B-")
        else:
            events.append("N")

    def on_event(e):
        if e.phase == "drag":
            events.append("L")
            drags.append(e)

    drags = []
    h1 = pipe.unet.register_forward_pre_hook(on_forward, with_kwargs=True)
    h2 = register_optimizer_step_post_hook(lambda *a: events.append("S"))
    try:
        res = pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), config=config, progress=False,
                   callback=on_event, **kw)
    finally:
        h1.remove()
        h2.remove()
    return events, drags, res


def test_a_drag_on_the_tiny_model_counted(tiny_pipe):
    # The tiny model's window distances (~0.2) stay below 0.5 l_expected: every search takes the
    # forward branch (up to d_max cells; the handle is 11 cells from its target), every search's
    # steps end after one step, and the pair is done once its point is within 2 cells.
    cfg = fd_config()
    events, drags, res = trace(tiny_pipe, cfg)
    inversion = ["N"] * cfg.inversion_steps
    one_round = ["L", "F", "S", "N"]
    assert events == inversion + ["N"] + one_round * 3 + ["B+"] * cfg.inversion_steps
    s = res.stats
    assert (s.drag_steps, s.drag_rounds, s.tracking_steps, s.drag_timesteps, s.stop_reason) == (3, 3, 3, 1, "reached")
    assert [(e.step, e.total, e.tracking, e.timestep) for e in drags] == [(i, 300, "search", 0) for i in range(3)]
    assert res.handle_points.tolist() == [POINTS[1]]  # the last search reached the target
    assert drags[-1].handle_points.tolist() == [POINTS[1]]


def test_the_budget_counts_steps_as_theirs(tiny_pipe):
    # l_expected 0.001: no step ends a search early. A budget of 4 stops inside the first search;
    # a budget of exactly 5 lets one more search run with no step (their step_idx test, :179 / :195)
    cfg = fd_config(l_expected=0.001, max_drag_steps=4)
    events, _, res = trace(tiny_pipe, cfg)
    assert (res.stats.drag_steps, res.stats.drag_rounds, res.stats.stop_reason) == (4, 1, "budget")
    assert events[cfg.inversion_steps + 1:][:10] == ["L", "F", "S", "F", "S", "F", "S", "F", "S", "N"]
    events, _, res = trace(tiny_pipe, dataclasses.replace(cfg, max_drag_steps=5))
    assert (res.stats.drag_steps, res.stats.drag_rounds, res.stats.tracking_steps) == (5, 2, 2)
    assert events[cfg.inversion_steps + 1:][:14] == ["L"] + ["F", "S"] * 5 + ["N", "L", "N"]


def test_the_line_search_moves_the_points(tiny_pipe):
    """Without the line search (a hook that returns the points unchanged) nothing moves: the points
    stay at the handles, the budget runs out and the edit is another one."""
    cfg = fd_config(max_drag_steps=6)
    calls = []

    def recorded(*args):
        out = freedrag.line_search(*args)
        calls.append(out.clone())
        return out

    tiny_pipe.hooks = DragHooks(line_search=recorded)
    try:
        searched = tiny_pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), config=cfg, progress=False)
        tiny_pipe.hooks = DragHooks(line_search=lambda features, templates, points, *rest: points)
        still = tiny_pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), config=cfg, progress=False)
    finally:
        tiny_pipe.hooks = DragHooks()
    assert len(calls) == searched.stats.tracking_steps == 3 and searched.stats.stop_reason == "reached"
    assert searched.handle_points.tolist() == [POINTS[1]]
    # the handle's cell, back in image pixels: (38, 40) is held as the cell at x = 37.5
    assert still.handle_points.tolist() == [[37.5, 40.0]] and still.stats.stop_reason == "budget"
    assert still.stats.drag_steps == 6
    assert not torch.equal(searched.latents, still.latents)


def test_runs_on_sdxl(tmp_path):
    from gooddrag import DragPipeline
    from gooddrag.models.tiny_sdxl import save_tiny_sdxl_pipeline

    pipe = DragPipeline.from_pretrained(str(save_tiny_sdxl_pipeline(tmp_path / "tiny-sdxl")), device="cpu")
    cfg = get_preset("freedrag-sdxl", resolution=128, lora_steps=0, num_inference_steps=10, feature_block=2,
                     mutual_attention_start_layer=11)  # the tiny SDXL UNet's structural settings
    res = pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), config=cfg, progress=False)
    assert res.stats.drag_steps > 0 and res.image.size == make_image().size
