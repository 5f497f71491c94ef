"""Speed work (issue 6) keeps the results: the speed benchmark runs on the tiny
model and writes every phase of every path; the fast path and the reference
path, the LoRA fused and not, and the low-memory mode give the same edit within
the tolerances stated below; the loops read the host once per tracking round.

Tolerances (tiny model, CPU, fp32). Fusing the LoRA changes the UNet's weights
by rounding only (W + BA is rounded once, where the unfused layer rounds W x and
B A x separately): UNet outputs agree to 1e-5 relative. Through inversion, the
drag (Adam steps) and denoising that moves an 8-bit output pixel by at most
``MAX_PIXEL_DIFF`` levels (mean below ``MEAN_PIXEL_DIFF``), and the tracked
handles by at most one supervision cell (``HANDLE_ATOL`` input pixels).
Gradient checkpointing recomputes the same operations; sliced attention sums
in another order: the same bounds hold.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gooddrag import DragPipeline
from gooddrag.models import lora
from tests.helpers import POINTS, make_image, make_mask, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "research" / "speed.py"

MAX_PIXEL_DIFF = 3  # of 255
MEAN_PIXEL_DIFF = 0.25  # of 255
SCRIPT_MEAN_PIXEL_DIFF = 1.5  # of 255: research/speed.py's paths, see its test (measured at most 0.60)
HANDLE_ATOL = 1.5  # input pixels: one supervision cell of the 96x80 test image at 128 px working size

# LoRA trained (and so fused) in the edits compared below; the full drag budget runs.
CFG = dict(lora_steps=4, lora_batch_size=2, stop_distance=0.0, max_track_no_change=0)


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("gooddrag_bench_speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(pipe, config, tmp_path, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # peft draws the LoRA's initial A matrices from the global RNG
        return pipe(make_image(), [POINTS[0]], [POINTS[1]], mask=make_mask(), config=config, progress=False,
                    lora_cache_dir=tmp_path / f"cache-{id(pipe)}", **kw)


def assert_same_edit(a, b):
    ia, ib = np.asarray(a.image).astype(int), np.asarray(b.image).astype(int)
    diff = np.abs(ia - ib)
    assert diff.max() <= MAX_PIXEL_DIFF and diff.mean() <= MEAN_PIXEL_DIFF, (diff.max(), diff.mean())
    np.testing.assert_allclose(a.handle_points, b.handle_points, atol=HANDLE_ATOL)
    assert a.stats == b.stats


def test_benchmark_script_on_the_tiny_model_writes_every_phase_of_every_path(tmp_path):
    out = tmp_path / "speed.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(SPEED), "--model", "tiny", "--schedule", "short", "--reference", "--low-memory",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"default", "reference", "low_memory"}
    for name, path in report["paths"].items():
        assert set(path["seconds"]) == {"lora", "encode", "inversion", "drag", "denoise", "decode", "other", "total", "rest"}
        assert all(v >= 0 for k, v in path["seconds"].items() if k != "other"), path["seconds"]
        assert path["seconds"]["total"] >= path["seconds"]["lora"] + path["seconds"]["drag"]
        assert path["peak_bytes"] is None  # CPU: no GPU memory to report
        # fixed work: the short schedule's 2 timesteps x 2 rounds x 2 steps, nothing stopped early;
        # a tracking at each timestep's start and one closing each round
        assert path["stats"]["drag_steps"] == 8 and path["stats"]["tracking_steps"] == 6
        assert path["stats"]["stop_reason"] == "budget" and path["lora_source"] == "trained"
    assert report["paths"]["reference"]["settings"] == {
        "fuse_lora": False, "fused_adam": False, "channels_last": False, "low_memory": False, "reference": True}
    assert report["paths"]["default"]["settings"]["fuse_lora"] is True
    assert report["paths"]["low_memory"]["settings"]["low_memory"] is True
    for name in ("reference", "low_memory"):
        # The short schedule's default tracking amplifies the fused LoRA's rounding; on kernels
        # other than this machine's it moves single pixels by up to 19 levels (mean 0.60, avx2
        # kernel set of tests/golden/kernels.py; 0.001-0.002 elsewhere). What survives: the mean
        # and the final handles. test_fast_and_reference_paths_give_the_same_edit keeps the tight
        # per-pixel bound on a run without early stops.
        assert report["paths"][name]["image_vs_default"]["mean_abs"] <= SCRIPT_MEAN_PIXEL_DIFF
        assert np.allclose(report["paths"][name]["handle_points"], report["paths"]["default"]["handle_points"],
                           atol=HANDLE_ATOL)
    assert report["speedup"] > 0
    assert "seconds" in proc.stdout and "speed-up" in proc.stdout


def test_fused_lora_dispatches_as_few_operators_as_the_base_unet(speed, tmp_path):
    with torch.random.fork_rng(devices=[]):  # the tiny model is built from a fixed seed
        report = speed.main(["--model", "tiny", "--count-ops", "--json", str(tmp_path / "ops.json")])
    ops = report["ops_per_unet_call"]
    assert ops["lora_fused"] == ops["base"]
    for call in ("forward", "forward_backward"):
        assert ops["lora_unfused"][call] > ops["base"][call] * 1.3
    assert ops["base_weights_trainable"]["forward_backward"] > ops["base"]["forward_backward"]
    assert json.loads((tmp_path / "ops.json").read_text())["ops_per_unet_call"] == ops


def test_full_size_model_is_refused_on_the_cpu(speed, capsys):
    with pytest.raises(SystemExit):
        speed.main(["--device", "cpu"])
    assert "needs a GPU" in capsys.readouterr().err


def test_fast_and_reference_paths_give_the_same_edit(speed, tiny_pipe, tiny_model_dir, tmp_path):
    reference = speed.ReferencePipeline.from_pretrained(str(tiny_model_dir), device="cpu")
    assert not reference.fuse_lora and not reference.fused_adam
    fast = run(tiny_pipe, tiny_config(**CFG), tmp_path)
    ref = run(reference, tiny_config(**CFG), tmp_path)
    assert fast.lora["source"] == ref.lora["source"] == "trained"
    assert_same_edit(fast, ref)


def _unet_out(pipe, batch=2):
    torch.manual_seed(3)
    z = torch.randn(batch, 4, 16, 16)
    with torch.no_grad():
        return pipe.model_output(z, torch.tensor(400), pipe.encode_prompt(""))


def test_fused_lora_gives_the_same_unet_output_and_the_base_comes_back_exactly(tiny_pipe, tmp_path):
    cfg = tiny_config(**CFG)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
    base = _unet_out(tiny_pipe)
    try:
        tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path, progress=False)
        unfused = _unet_out(tiny_pipe)
        assert lora.fuse_lora(tiny_pipe.unet)
        assert not lora.fuse_lora(tiny_pipe.unet)  # already fused: nothing to do
        fused = _unet_out(tiny_pipe)
    finally:
        lora.remove_lora(tiny_pipe.unet)
    assert not torch.allclose(unfused, base, rtol=1e-3, atol=1e-5)  # the LoRA does something
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    assert torch.equal(_unet_out(tiny_pipe), base)  # bit for bit: restored, not subtracted
    assert not lora.fuse_lora(tiny_pipe.unet)  # no adapter: nothing to fuse


def test_edit_fuses_the_lora_and_restores_the_base_unet(tiny_pipe, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = _unet_out(tiny_pipe)
    merged = []

    def during(event):
        if event.phase == "drag":
            layers = [m for m in tiny_pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
            merged.append(bool(layers) and all(m.merged for m in layers))

    fused = run(tiny_pipe, tiny_config(**CFG), tmp_path, callback=during)
    assert merged and all(merged)
    assert torch.equal(_unet_out(tiny_pipe), base)
    assert not getattr(tiny_pipe.unet, "peft_config", {})
    tiny_pipe.fuse_lora = False
    try:
        unfused = run(tiny_pipe, tiny_config(**CFG), tmp_path / "unfused")
    finally:
        tiny_pipe.fuse_lora = True
    assert_same_edit(fused, unfused)


def test_low_memory_mode_gives_the_same_edit(tiny_pipe, tiny_model_dir, tmp_path, monkeypatch):
    low = DragPipeline.from_pretrained(str(tiny_model_dir), device="cpu").enable_low_memory(attention_slicing=True)
    assert low.low_memory and low.unet.is_gradient_checkpointing and low.vae.use_tiling and low.vae.use_slicing
    checkpointed = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        checkpointed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    a = run(low, tiny_config(**CFG), tmp_path, return_trajectory=True)
    assert checkpointed  # the LoRA's and the drag's backward passes recompute instead of storing
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", original)
    b = run(tiny_pipe, tiny_config(**CFG), tmp_path, return_trajectory=True)
    assert_same_edit(a, b)
    for fa, fb in zip(a.trajectory, b.trajectory):  # VAE slicing decodes the frames one by one
        assert np.abs(np.asarray(fa).astype(int) - np.asarray(fb).astype(int)).max() <= MAX_PIXEL_DIFF


def test_loops_read_the_host_once_per_tracking(tiny_pipe, tmp_path, monkeypatch):
    """A CPU stand-in for "no host syncs in the loops": count the tensor methods that
    read a value back to Python. On a GPU, ``research/speed.py --sync-debug`` counts
    the synchronizing CUDA calls themselves."""
    counts = {"item": 0, "tolist": 0, "__bool__": 0, "__float__": 0, "__int__": 0}
    where = {"phase": None}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            # Adam reads its step count, a CPU tensor even for CUDA parameters (fused Adam keeps it on the device)
            if where["phase"] is not None and "torch/optim" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                counts[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in counts:
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def in_loops(fn):
        def wrapper(*args, **kwargs):
            where["phase"] = fn.__name__
            try:
                return fn(*args, **kwargs)
            finally:
                where["phase"] = None
        return wrapper

    monkeypatch.setattr(tiny_pipe, "invert", in_loops(tiny_pipe.invert))
    monkeypatch.setattr(tiny_pipe, "drag_and_denoise", in_loops(tiny_pipe.drag_and_denoise))
    cfg = tiny_config(drag_end_step=2, track_per_step=3, max_drag_per_track=2, stop_distance=0.0, max_track_no_change=0)
    res = run(tiny_pipe, cfg, tmp_path)
    assert res.stats.tracking_steps == 8  # 2 timestep starts + 2 x 3 rounds
    # one host read per tracking, none per optimiser step
    assert counts == {"item": 0, "tolist": 8, "__bool__": 0, "__float__": 0, "__int__": 0}
