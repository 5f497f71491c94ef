"""The shipped shapes-64 model, the offline demo and the shapes benchmark, end to end."""

import csv
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from gooddrag.cli import main
from gooddrag.core.ddim import ddim_step, make_schedule
from gooddrag.shapes.benchmark import load_shapes_pipeline, shipped_model_dir
from tests.helpers import in_ci


@pytest.fixture(scope="module")
def shapes_pipe():
    return load_shapes_pipeline()


def test_shipped_model_is_small_and_complete():
    folder = shipped_model_dir()
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"{total / 2**20:.1f} MB"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    assert (folder / "README.md").is_file()  # the model card


@torch.no_grad()
def test_shipped_model_loads_offline_and_produces_a_sample(shapes_pipe):
    assert shapes_pipe.source.kind == "folder"
    assert shapes_pipe.vae_scale_factor == 4 and shapes_pipe.size_multiple == 16
    sch = make_schedule(shapes_pipe.scheduler, 20, 20)
    text = shapes_pipe.encode_prompt("")
    z = torch.randn(1, shapes_pipe.unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    for k in range(len(sch)):
        z = ddim_step(z, shapes_pipe.model_output(z, sch.timesteps[k], text), sch.alphas[k], sch.alphas_prev[k])
    image = np.asarray(shapes_pipe.decode_latents(z)[0])
    assert image.shape == (64, 64, 3)
    assert image.std() > 5  # not a flat field


@torch.no_grad()
def test_shipped_autoencoder_reconstructs_unseen_scenes(shapes_pipe):
    """Every edit passes through the autoencoder, so its error bounds the outside-mask PSNR of any edit.
    The shipped one measured 33.1 dB on its training data (model card); unseen scenes must stay above 30 dB."""
    from gooddrag.shapes.train import render_dataset

    images = torch.from_numpy(render_dataset(8, seed=12345))  # (16, 3, 64, 64) in [-1, 1], seed unlike training's
    vae = shapes_pipe.vae
    recon = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    psnr = -10 * torch.log10(((recon - images) / 2).pow(2).mean())
    assert psnr > 30, f"{psnr:.2f} dB"


def test_demo_runs_both_methods_on_a_move_and_a_turn(tmp_path, capsys):
    out = tmp_path / "demo"
    started = time.perf_counter()
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    seconds = time.perf_counter() - started
    folders = ["move-gooddrag", "move-gooddrag-plus", "turn-gooddrag", "turn-gooddrag-plus"]
    for folder in folders:
        for name in ("edited.png", "ground_truth.png", "trajectory.gif", "run.json", "input_with_points.png",
                     "result_with_points.png", "new_points.json"):
            assert (out / folder / name).is_file(), (folder, name)
        record = json.loads((out / folder / "run.json").read_text())
        assert record["config"]["resolution"] == 64 and "iou" in record["ground_truth_scores"]
        assert record["config"]["method"] == folder.split("-", 1)[1]
    with Image.open(out / "comparison.png") as im:  # 2 rows of 4 tiles of 256 px: input, 2 methods, answer
        assert im.width > 4 * 256 and 2 * 256 < im.height < 3 * 256
    scores = json.loads((out / "scores.json").read_text())
    assert sorted(scores) == sorted(folders)
    # what we do better, on the turn: GoodDrag+ follows it (the faithful method does not)
    assert scores["turn-gooddrag-plus"]["iou"] > scores["turn-gooddrag"]["iou"]
    printed = capsys.readouterr().out
    assert "px from its true place" in printed and "point error" in printed and printed.count("IoU") == 4
    assert seconds < 60 * (3 if in_ci() else 1.5), seconds  # issue: under 60 s on 2 cores


def test_bench_shapes_writes_tables_and_identity_scores_the_distance(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "shapes", "--cases", "2", "--seed", "3", "--per-kind", "1", "--kinds",
                 "single,multi_point,multi_object,rotate,scale", "--method", "identity,autoencoder,fastdrag",
                 "--out", str(out), "--no-progress"]) == 0
    for name in ("results.md", "results.csv", "summary.json", "figure.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["identity", "autoencoder", "fastdrag"] * 4  # FastDrag: a method in seconds
    assert [r["kind"] for r in rows[6:]] == ["rotate"] * 3 + ["scale"] * 3
    identity = [r for r in rows if r["method"] == "identity"]
    # doing nothing leaves the object where it was: error ~ the requested distance (or drag)
    assert all(abs(float(r["relative_error"]) - 1.0) < 0.25 for r in identity)
    assert all(abs(float(r["relative_error"]) - 1.0) < 0.05 for r in identity[:2])
    assert all(float(r["psnr_outside_mask"]) == float("inf") for r in identity)
    ceiling = [r for r in rows if r["method"] == "autoencoder"]  # the answer through the VAE: near the answer
    assert all(float(r["iou"]) > 0.75 and float(r["relative_error"]) < 0.35 for r in ceiling)
    text = capsys.readouterr().out
    assert "| identity |" in text and "### rotate (1 cases)" in text and "### scale (1 cases)" in text


@pytest.mark.parametrize("argv,message", [
    (["bench", "shapes", "--method", "magic"], "unknown method(s) magic"),
    (["bench", "shapes", "--cases", "0"], "--cases must be at least 1"),
])
def test_bench_errors(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err
