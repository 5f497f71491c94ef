"""End-to-end runs of the engine on the tiny model: the AIDD loop does the work the
config says (counted), the DragDiffusion preset drags at one timestep, early stops,
repeatability, any input size."""

from dataclasses import replace

import numpy as np
import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from gooddrag import PRESETS, GoodDragError, StepEvent
from gooddrag.errors import NO_MASK_WARNING, InputsCannotWorkError
from gooddrag.models.attention import MutualSelfAttentionProcessor
from tests.helpers import POINTS, make_image, make_mask, tiny_config


def run(pipe, config, image=None, handles=(POINTS[0],), targets=(POINTS[1],), **kw):
    image = image or make_image()
    return pipe(image, list(handles), list(targets), mask=kw.pop("mask", make_mask()), config=config,
                progress=False, **kw)


def trace(pipe, config, **kw):
    """Run an edit and record its events in order: ``F`` a forward pass with gradient (a drag
    step's), ``S`` an optimiser step, ``T:start`` / ``T:round`` a tracking, ``B+`` / ``B-`` a
    batched DDIM step with / without mutual self-attention installed (read from the UNet's
    processors at that moment)."""
    events = []

    def on_forward(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if sample.requires_grad:
            events.append("F")
        elif sample.shape[0] == 2:
            mutual = any(isinstance(p, MutualSelfAttentionProcessor) for p in module.attn_processors.values())
            events.append("B+" if mutual else "B-")

    def on_event(e):
        if e.phase == "drag":
            events.append(f"T:{e.tracking}")

    h1 = pipe.unet.register_forward_pre_hook(on_forward, with_kwargs=True)
    h2 = register_optimizer_step_post_hook(lambda *a: events.append("S"))
    try:
        res = run(pipe, config, callback=on_event, **kw)
    finally:
        h1.remove()
        h2.remove()
    return events, res


def test_aidd_runs_the_configured_drag_and_tracking_steps(tiny_pipe):
    # stop_distance 0 and max_track_no_change 0: no early stop, the full budget runs
    cfg = tiny_config(drag_end_step=3, track_per_step=4, max_drag_per_track=2, stop_distance=0.0,
                      max_track_no_change=0)
    events = []
    res = run(tiny_pipe, cfg, callback=events.append)
    assert res.stats.stop_reason == "budget"
    assert res.stats.drag_timesteps == 3
    assert res.stats.drag_steps_per_timestep == [8, 8, 8]  # 4 rounds x 2 optimiser steps
    assert res.stats.drag_steps == 24
    assert res.stats.drag_rounds == 12
    assert res.stats.tracking_steps == 15  # one at each timestep's start + one per round (3 + 3 x 4)
    phases = [e.phase for e in events]
    assert phases.count("drag") == 15
    assert phases.count("inversion") == cfg.inversion_steps == 8
    assert phases.count("denoise") == 8
    assert all(isinstance(e, StepEvent) for e in events)
    drags = [e for e in events if e.phase == "drag"]
    assert [e.timestep for e in drags] == [0] * 5 + [1] * 5 + [2] * 5
    assert [e.step for e in drags][:5] == [0, 1, 2, 3, 4]  # rounds done, out of 12
    assert np.allclose(drags[-1].handle_points, res.handle_points)


def test_order_of_events_in_a_drag_timestep_follows_the_authors(tiny_pipe):
    """GoodDrag's gooddrag_step: one tracking on the first forward pass, then each optimiser step
    after its own forward pass, and each round closed by a tracking on the round's LAST forward
    pass (taken before its last step: an S lies between that F and the T); no tracking after the
    last timestep; the DDIM steps of drag timesteps run without mutual self-attention, which is
    on from the first step without drag work."""
    cfg = tiny_config(drag_end_step=2, track_per_step=2, max_drag_per_track=2, stop_distance=0.0,
                      max_track_no_change=0)
    events, res = trace(tiny_pipe, cfg)
    block = ["F", "T:start", "S", "F", "S", "T:round", "F", "S", "F", "S", "T:round"]
    n_steps = cfg.inversion_steps
    assert events == block + ["B-"] + block + ["B-"] + ["B+"] * (n_steps - 2)
    assert res.stats.drag_steps_per_timestep == [4, 4]


def test_drag_loss_threshold_closes_a_round_after_the_step(tiny_pipe):
    # the authors' semantics: after a step whose drag loss is <= threshold x (2 r1)^2 the round
    # closes with a tracking, so a threshold above any loss makes every round one step long
    cfg = tiny_config(drag_end_step=1, track_per_step=2, max_drag_per_track=3, stop_distance=0.0,
                      max_track_no_change=0, drag_loss_threshold=1e9)
    events, res = trace(tiny_pipe, cfg)
    assert events[:7] == ["F", "T:start", "S", "T:round", "F", "S", "T:round"]
    assert res.stats.drag_steps_per_timestep == [2]
    # a threshold below any loss changes nothing: 2 rounds x 3 steps
    _, res = trace(tiny_pipe, replace(cfg, drag_loss_threshold=1e-9))
    assert res.stats.drag_steps_per_timestep == [6]


def test_fresh_feature_tracking_option_tracks_on_the_next_forward(tiny_pipe):
    cfg = tiny_config(drag_end_step=2, track_per_step=2, max_drag_per_track=2, stop_distance=0.0,
                      max_track_no_change=0, track_on_fresh_features=True)
    events, _ = trace(tiny_pipe, cfg)
    # each round's tracking waits for the next forward pass (the latent after the step); the last
    # round's is dropped: the next timestep starts with its own tracking
    block = ["F", "T:start", "S", "F", "S", "F", "T:round", "S", "F", "S"]
    assert events[:2 * len(block) + 2] == block + ["B-"] + block + ["B-"]


def test_mutual_attention_while_dragging_option(tiny_pipe):
    cfg = tiny_config(drag_end_step=2, track_per_step=1, max_drag_per_track=1, stop_distance=0.0,
                      max_track_no_change=0, mutual_attention_while_dragging=True)
    events, _ = trace(tiny_pipe, cfg)
    assert [e for e in events if e.startswith("B")] == ["B+"] * cfg.inversion_steps
    # start_step counts denoising steps from where it would start
    events, _ = trace(tiny_pipe, replace(cfg, mutual_attention_while_dragging=False, mutual_attention_start_step=3))
    assert [e for e in events if e.startswith("B")] == ["B-"] * 5 + ["B+"] * (cfg.inversion_steps - 5)


def test_dragdiffusion_preset_drags_at_one_timestep_only(tiny_pipe):
    cfg = tiny_config("dragdiffusion", drag_end_step=1, track_per_step=6, max_drag_per_track=1, stop_distance=0.0)
    assert PRESETS["dragdiffusion"].drag_end_step == 1 and PRESETS["dragdiffusion"].max_drag_per_track == 1
    events, res = trace(tiny_pipe, cfg)
    assert res.stats.drag_timesteps == 1
    assert res.stats.drag_steps_per_timestep == [6]
    # DragDiffusion's drag_diffusion_update: from the second step on, track on the step's own
    # forward pass, then step; mutual self-attention from the first denoising step (its denoising
    # starts at the drag timestep with the editor registered)
    assert events == ["F", "S"] + ["F", "T:round", "S"] * 5 + ["B+"] * cfg.inversion_steps
    assert res.stats.tracking_steps == 5


def test_no_change_count_carries_over_and_ignores_timestep_starts(tiny_pipe):
    # r2 = 0: tracking can never move a handle. One round of one step per timestep: each timestep
    # has a start tracking (not counted) and a round tracking (counted). The count reaches 2 at the
    # end of timestep 1, so timestep 2 does no drag work, and neither does any later one; mutual
    # self-attention starts there.
    cfg = tiny_config(r2=0, max_track_no_change=2, track_per_step=1, max_drag_per_track=1, drag_end_step=4,
                      stop_distance=0.0)
    events, res = trace(tiny_pipe, cfg)
    assert res.stats.stop_reason == "no_change"
    assert res.stats.drag_steps_per_timestep == [1, 1]
    block = ["F", "T:start", "S", "T:round", "B-"]
    assert events == block + block + ["B+"] * (cfg.inversion_steps - 2)


def test_stops_when_tracking_does_not_move(tiny_pipe):
    # r2 = 0: no handle ever moves, so the no-change stop fires after 2 counted rounds, tested
    # before the next optimiser step
    cfg = tiny_config(r2=0, max_track_no_change=2, track_per_step=10, max_drag_per_track=3, drag_end_step=3)
    res = run(tiny_pipe, cfg)
    assert res.stats.stop_reason == "no_change"
    assert res.stats.tracking_steps == 3  # the timestep's start + 2 rounds
    assert res.stats.drag_steps == 6  # rounds 1 and 2 ran; the stop test came before round 3's first step
    assert res.stats.drag_steps_per_timestep == [6]


def test_reaching_the_targets_ends_the_drag_phase(tiny_pipe):
    # 2 px apart on the 128-px working image = 1 supervision cell < stop distance 2: the start
    # tracking (r2 = 0 keeps the handle) finds it done before any step, and no later timestep drags
    cfg = tiny_config(r2=0, track_per_step=10, drag_end_step=3)
    events, res = trace(tiny_pipe, cfg, handles=[[40, 40]], targets=[[42, 40]])
    assert res.stats.stop_reason == "reached"
    assert res.stats.tracking_steps == 1 and res.stats.drag_steps == 0
    assert res.stats.drag_steps_per_timestep == [0]
    assert events == ["F", "T:start", "B-"] + ["B+"] * (cfg.inversion_steps - 1)


def test_same_seed_same_image_and_lora_seed_matters(tiny_pipe):
    cfg = tiny_config(lora_steps=2, lora_batch_size=1)
    a = np.asarray(run(tiny_pipe, cfg).image)
    b = np.asarray(run(tiny_pipe, cfg).image)
    assert np.array_equal(a, b)


def test_any_input_size_comes_back_at_that_size(tiny_pipe):
    image = make_image(150, 70)  # aspect 2.1: working size 64 x 128
    res = run(tiny_pipe, tiny_config(), image=image, mask=None, handles=[[30, 30]], targets=[[90, 40]],
              return_trajectory=True)
    assert res.image.size == (150, 70)
    assert res.working_size == (64, 128)
    assert res.handle_points.shape == (1, 2)
    assert (0 <= res.handle_points[:, 0]).all() and (res.handle_points[:, 0] <= 150).all()
    assert len(res.trajectory) == tiny_config().drag_end_step + 2
    assert all(f.size == (150, 70) for f in res.trajectory)
    assert set(res.timings) >= {"lora", "inversion", "drag", "denoise", "decode", "total"}


def test_mask_of_another_size_is_resized_with_a_warning(tiny_pipe, caplog):
    small = make_mask(48, 40)
    with caplog.at_level("WARNING", logger="gooddrag.methods.pipeline"):
        inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], small, tiny_config())
    assert "resized" in caplog.text
    assert inputs.mask.shape == (1, 1, 16, 16)


def test_no_mask_means_everything_may_change_and_says_so(tiny_pipe, caplog):
    with caplog.at_level("WARNING", logger="gooddrag.methods.pipeline"):
        inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, tiny_config())
    assert inputs.mask.min().item() == 1.0
    assert [r.getMessage() for r in caplog.records] == [NO_MASK_WARNING]


def test_a_mask_that_marks_nothing_is_refused(tiny_pipe):
    with pytest.raises(InputsCannotWorkError, match="the mask marks nothing as editable .white = may change.; "
                                                    "give no mask to let everything change"):
        tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], np.zeros((80, 96), bool), tiny_config())


@pytest.mark.parametrize("handles,targets,match", [
    ([[38, 40]], [[60, 40]], r"pair 1: its handle \(38, 40\) lies outside"),
    ([[60, 40], [38, 40]], [[70, 40], [60, 40]], r"pair 2: its handle \(38, 40\)"),
    ([[60, 40]], [[38, 40]], r"pair 1: its target \(38, 40\)"),
])
def test_a_handle_or_target_outside_the_mask_is_refused(tiny_pipe, handles, targets, match):
    mask = np.zeros((80, 96), bool)
    mask[:, 48:] = True  # the right half may change; x = 38 lies in the left half
    with pytest.raises(InputsCannotWorkError, match=match + ".*paint the mask over the handle and its target"):
        tiny_pipe.check_inputs(make_image(), handles, targets, mask, tiny_config())


def test_a_mask_too_thin_for_the_latent_grid_is_refused(tiny_pipe):
    # 96x80 input -> 64x64 supervision grid -> 16x16 latent, nearest each time: supervision column j
    # reads input column floor(j * 96 / 64) = floor(1.5 j), latent column c reads supervision column 4c,
    # i.e. input column 6c = 0, 6, 12, ...: a one-pixel line at x = 1 reaches no latent cell.
    mask = np.zeros((80, 96), bool)
    mask[:, 1] = True
    with pytest.raises(InputsCannotWorkError, match="keeps no cell of the model's 16x16 latent grid"):
        tiny_pipe.check_inputs(make_image(), [[1, 10]], [[1, 50]], mask, tiny_config())


def test_point_frames_at_the_boundary(tiny_pipe):
    inputs = tiny_pipe.check_inputs(make_image(), [[48, 40]], [[95, 0]], None, tiny_config())
    # 96x80 -> working 128x128 -> supervision 64x64: row = round(40/80*128 * 64/128) = 32
    assert inputs.working_size == (128, 128) and inputs.sup_size == (64, 64)
    assert inputs.handle_points.tolist() == [[32.0, 32.0]]
    assert inputs.target_points.tolist() == [[0.0, round(95 / 96 * 64)]]


@pytest.mark.parametrize("handles,targets,match", [
    ([[200, 10]], [[10, 10]], "outside"),
    ([[10, 10]], [[10, 10]], "equals its target"),
    ([[10, 10], [20, 20]], [[30, 30]], "2 handle point"),
    ([], [], "no points"),
])
def test_bad_points_are_refused(tiny_pipe, handles, targets, match):
    with pytest.raises(GoodDragError, match=match):
        tiny_pipe.check_inputs(make_image(), handles, targets, None, tiny_config())


def test_feature_block_out_of_range_is_a_clear_error(tiny_pipe):
    with pytest.raises(GoodDragError, match="feature_block=9"):
        run(tiny_pipe, tiny_config(feature_block=9))


def test_v_prediction_model_runs_end_to_end(tiny_model_dir, tmp_path):
    """An SD2-style v-prediction model: the scheduler config says so, and LoRA
    training (velocity target), inversion, drag and denoising all use it."""
    import json
    import shutil

    from gooddrag import DragPipeline

    folder = tmp_path / "tiny-v"
    shutil.copytree(tiny_model_dir, folder)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"prediction_type": "v_prediction"}))
    pipe = DragPipeline.from_pretrained(str(folder), device="cpu")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    res = run(pipe, tiny_config(lora_steps=2, lora_batch_size=1), lora_cache_dir=tmp_path / "cache")
    assert res.lora["source"] == "trained" and np.isfinite(res.lora["final_loss"])
    assert res.stats.drag_steps > 0
    assert np.asarray(res.image).std() > 0
