"""The method seam: the registry, the hooks a caller passes in, a method added as one module, and the
old module names kept for one release."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import warnings

import pytest
import torch

from gooddrag import GoodDragError
from gooddrag.methods import config, registry
from gooddrag.methods.base import DragHooks, DragMethod, DragOutcome, DragStats, motion_loss, track
from gooddrag.methods.denoise import denoise_step

from .helpers import POINTS, make_image, tiny_config


def run(pipe, cfg, **kw):
    return pipe(make_image(), [POINTS[0]], [POINTS[1]], None, config=cfg, progress=False, **kw)


def test_every_configured_method_has_one_registry_entry():
    assert set(registry.METHODS) == set(config.METHODS)
    assert all(m.name == name for name, m in registry.METHODS.items())
    assert {n for n, m in registry.METHODS.items() if not m.faithful} == {"gooddrag-plus"}
    with pytest.raises(GoodDragError, match="unknown method 'nope'"):
        registry.get_method("nope")


def test_hooks_are_what_the_drag_calls(tiny_pipe):
    cfg = tiny_config(drag_end_step=1, track_per_step=2, max_drag_per_track=2, stop_distance=0.0,
                      max_track_no_change=0)
    calls = {"track": 0, "loss": 0, "pixels": 0, "phases": []}

    def counting_track(*args):
        calls["track"] += 1
        return track(*args)

    def counting_loss(*args):
        calls["loss"] += 1
        return motion_loss(*args)

    def pixels(image):
        calls["pixels"] += 1
        return tiny_pipe.sd.image_processor.preprocess(image).to(tiny_pipe.device, tiny_pipe.vae.dtype)

    def phase(name):
        calls["phases"].append(name)
        return contextlib.nullcontext()

    plain = run(tiny_pipe, cfg)
    tiny_pipe.hooks = DragHooks(track=counting_track, motion_loss=counting_loss, pixels=pixels, phase=phase)
    try:
        hooked = run(tiny_pipe, cfg)
    finally:
        tiny_pipe.hooks = DragHooks()
    assert calls["track"] == hooked.stats.tracking_steps == 3  # the timestep's start + 2 rounds
    assert calls["loss"] == hooked.stats.drag_steps == 4
    assert calls["pixels"] == 1  # the input's encoding (no LoRA in the tiny settings)
    # the reference trajectory and each drag timestep are marked "drag", inside "denoise"
    assert calls["phases"] == ["lora", "inversion", "denoise", "drag", "drag", "decode"]
    # the default hooks wrapped: the same edit
    assert torch.equal(hooked.latents, plain.latents)


def _denoise_only(model, source, ctx) -> DragOutcome:
    """A method in a few lines: no drag; both branches denoised, mutual self-attention from the
    preset's start step (what a new module's ``run`` looks like)."""
    z, src, trajectory = source.latents, source.latents, []
    with contextlib.ExitStack() as stack:
        for k in range(len(ctx.schedule)):
            if k == ctx.config.mutual_attention_start_step:
                stack.enter_context(model.mutual_attention(ctx.config.mutual_attention_start_layer))
            src, z = denoise_step(model, src, z, k, ctx, trajectory)
    return DragOutcome(latents=z, handles=source.handles, stats=DragStats(), trajectory=trajectory, timings={})


def test_a_new_method_is_a_function_and_a_registry_entry(tiny_pipe, monkeypatch):
    monkeypatch.setitem(registry.METHODS, "denoise-only", DragMethod("denoise-only", _denoise_only, faithful=False))
    monkeypatch.setattr(config, "METHODS", (*config.METHODS, "denoise-only"))
    # DragDiffusion (mutual attention while dragging) with lam 0 and a motion loss of zero gradient:
    # every Adam step moves the latent by exactly 0, so its edit is the new method's
    cfg = tiny_config("dragdiffusion", drag_end_step=1, track_per_step=3, max_drag_per_track=1, stop_distance=0.0, lam=0.0)
    res = run(tiny_pipe, dataclasses.replace(cfg, method="denoise-only"))
    assert res.stats.drag_steps == 0 and res.config.method == "denoise-only"
    tiny_pipe.hooks = DragHooks(motion_loss=lambda features, *rest: 0.0 * features.sum())
    try:
        still = run(tiny_pipe, cfg)
    finally:
        tiny_pipe.hooks = DragHooks()
    moved = run(tiny_pipe, cfg)
    assert still.stats.drag_steps == moved.stats.drag_steps == 3
    assert torch.equal(still.latents, res.latents)  # the drag ran through the hook, not around it
    assert not torch.equal(moved.latents, res.latents)


@pytest.mark.parametrize("old, new", [
    ("gooddrag.pipeline", "gooddrag.methods.pipeline"),
    ("gooddrag.config", "gooddrag.methods.config"),
    ("gooddrag.motion", "gooddrag.core.motion"),
    ("gooddrag.lora", "gooddrag.models.lora"),
    ("gooddrag.outputs", "gooddrag.io.outputs"),
    ("gooddrag.shapes.bench", "gooddrag.shapes.benchmark"),
])
def test_a_moved_module_keeps_its_old_name_for_one_release(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the module keeps its own identity
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
