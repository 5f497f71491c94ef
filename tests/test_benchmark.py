"""gooddrag.benchmark: DAI and MD's matching step by hand, the sample finder, a
resumed ``bench run`` with broken samples, DIFT on the tiny model, IF's LPIPS
network, ``bench eval`` end to end and ``bench compare``.

Everything is offline with the tiny model and the small settings of
``helpers.TINY``; the runs are shared through a module-scoped fixture.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gooddrag.benchmark import evaluate as E
from gooddrag.benchmark import metrics as M
from gooddrag.benchmark import register_commands, run_command
from gooddrag.benchmark import runner as R
from gooddrag.errors import GoodDragError
from gooddrag.io.options import METHOD_SETTINGS
from gooddrag.io.outputs import RESULT_FILES

from .helpers import (
    POINTS,
    TINY,
    make_image,
    write_drag100_sample,
    write_dragbench_sample,
)

FLAG_OF = {name: flag for flag, name, _, _ in METHOD_SETTINGS}
TINY_FLAGS = [x for name, v in TINY.items() for x in (FLAG_OF[name], str(v))]


def bench(*argv) -> int:
    """``gooddrag bench ARGV`` through the hooks cli.py wires (errors as exceptions)."""
    parser = argparse.ArgumentParser(prog="gooddrag bench")
    register_commands(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args([str(a) for a in argv])
    args.argv = ["bench", *map(str, argv)]
    return run_command(args)


# ------------------------------------------------------------------ DAI by hand
def test_dai_by_hand_one_pair_inside_the_image():
    orig = np.zeros((5, 6, 3))
    res = np.zeros((5, 6, 3))
    orig[2, 1] = [1.0, 0.0, 0.0]  # the handle's pixel, (x, y) = (1, 2)
    res[2, 4] = [0.5, 0.0, 0.2]  # the target's pixel, (x, y) = (4, 2)
    pair = ([[1, 2]], [[4, 2]])
    # squared differences summed over the channels: 0.25 + 0.04 = 0.29
    assert M.dai(orig, res, *pair, gamma=0) == pytest.approx(0.29)
    # gamma 1: 3x3 patches (both fully inside), only the centre differs
    assert M.dai(orig, res, *pair, gamma=1) == pytest.approx(0.29 / 9)
    # one pair: both variants agree
    assert M.dai(orig, res, *pair, gamma=1, authors_variant=True) == pytest.approx(0.29 / 9)


def test_dai_by_hand_two_pairs_and_a_patch_cut_by_the_border():
    orig = np.zeros((5, 9, 3))
    res = np.zeros((5, 9, 3))
    orig[2, 1] = [1.0, 0.0, 0.0]
    res[2, 4] = [0.5, 0.0, 0.0]  # pair 1: (1, 2) -> (4, 2), error 0.25 at the centre
    orig[0, 0] = [0.0, 0.2, 0.0]  # pair 2: (0, 0) -> (7, 0), on the top border
    res[1, 8] = [0.0, 0.0, 0.3]  # at offset (dx, dy) = (1, 1) from the target
    handles, targets = [[1, 2], [0, 0]], [[4, 2], [7, 0]]
    # pair 2, gamma 1: offsets with both (0,0)+d and (7,0)+d inside: dx in {0, 1}, dy in {0, 1} -> 4 pixels;
    # differences: 0.2^2 at d = (0, 0) and 0.3^2 at d = (1, 1)
    s2, n2 = M.patch_error(orig, res, [0, 0], [7, 0], 1)
    assert (s2, n2) == (pytest.approx(0.04 + 0.09), 4)
    ours = (0.25 / 9 + 0.13 / 4) / 2
    authors = (0.25 / 9 + 0.13 / 9) / 2 / 2
    assert M.dai(orig, res, handles, targets, 1) == pytest.approx(ours)
    assert M.dai(orig, res, handles, targets, 1, authors_variant=True) == pytest.approx(authors)


def test_dai_is_zero_for_an_exact_move_and_reads_uint8_as_over_255():
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    res = np.roll(orig, 7, axis=1)  # content moved 7 px to the right
    assert M.dai(orig, res, [[20, 20]], [[27, 20]], 5) == 0.0
    assert M.dai(orig, res, [[20, 20]], [[20, 20]], 5) == pytest.approx(
        M.dai(orig / 255.0, res / 255.0, [[20, 20]], [[20, 20]], 5))
    # points are rounded to the nearest pixel
    assert M.dai(orig, res, [[19.6, 20.4]], [[26.7, 19.8]], 5) == 0.0


def test_dai_errors():
    img = np.zeros((5, 6, 3))
    with pytest.raises(GoodDragError, match="outside the 6x5 image"):
        M.dai(img, img, [[6, 0]], [[0, 0]], 1)
    with pytest.raises(GoodDragError, match="differ in size"):
        M.dai(img, np.zeros((5, 5, 3)), [[1, 1]], [[2, 2]], 1)


# ----------------------------------------------------------- MD matching by hand
def test_match_points_by_hand_cosine_not_dot_product():
    src = np.zeros((2, 3, 4), dtype=np.float32)
    src[:, 1, 2] = [1.0, 1.0]  # the handle's feature at (x, y) = (2, 1)
    dst = np.zeros((2, 3, 4), dtype=np.float32)
    dst[:, 0, 0] = [10.0, 0.0]  # large but 45 degrees off: cosine 0.707
    dst[:, 2, 3] = [0.3, 0.3]  # small but the same direction: cosine 1
    dst[:, 0, 1] = [1.0, 0.9]
    matched = M.match_points(src, dst, [[2, 1]])
    assert matched.tolist() == [[3, 2]]
    assert M.pair_distances(matched, [[0, 2]]).tolist() == [3.0]
    assert M.pair_distances([[0, 0], [3, 4]], [[0, 1], [0, 0]]).tolist() == [1.0, 5.0]


def test_match_points_ties_go_to_the_first_pixel_in_row_major_order():
    src = np.ones((3, 2, 2), dtype=np.float32)
    dst = np.ones((3, 2, 2), dtype=np.float32)
    assert M.match_points(src, dst, [[1, 1], [0, 1]]).tolist() == [[0, 0], [0, 0]]


def test_match_points_upsampled_in_chunks_equals_a_full_upsample():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    src, dst = torch.randn(1, 5, 4, 6, generator=g), torch.randn(1, 5, 4, 6, generator=g)
    handles = [[0, 0], [17, 9], [23, 15], [8.6, 3.2]]
    up_src = F.interpolate(src, size=(16, 24), mode="bilinear")[0]
    up_dst = F.interpolate(dst, size=(16, 24), mode="bilinear")[0]
    expect = []
    for x, y in handles:
        v = up_src[:, round(y), round(x)]
        cos = torch.nn.functional.cosine_similarity(v[:, None, None], up_dst, dim=0)
        r, c = divmod(int(cos.argmax()), 24)
        expect.append([c, r])
    assert M.match_points(src, dst, handles, size=(16, 24), chunk=2).tolist() == expect
    with pytest.raises(GoodDragError, match="outside the 24x16 image"):
        M.match_points(src, dst, [[24, 0]], size=(16, 24))


# ---------------------------------------------------------------- sample finder
def write_broken_dataset(root: Path) -> dict[str, str]:
    """4 good samples and 3 broken ones, nested in categories; returns {rel: expected outcome}."""
    write_drag100_sample(root / "cat_1")
    write_dragbench_sample(root / "animals" / "dog_1")
    write_dragbench_sample(root / "animals" / "dog_2")
    nomask = write_drag100_sample(root / "nomask_1")  # Drag100 without mask.png: allowed, all may change
    (nomask / "mask.png").unlink()
    bad = write_dragbench_sample(root / "animals" / "bad_pickle")
    (bad / "meta_data.pkl").write_bytes(b"\x80\x04not a pickle at all")
    far = write_drag100_sample(root / "far" / "out_of_range")
    (far / "points.json").write_text(json.dumps({"points": [[38, 40], [500, 40]]}))
    incomplete = root / "incomplete" / "only_image"
    incomplete.mkdir(parents=True)
    make_image().save(incomplete / "original.jpg")
    (root / ".hidden" / "x").mkdir(parents=True)
    make_image().save(root / ".hidden" / "x" / "original.jpg")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a sample")
    return {
        "animals/bad_pickle": "is not a DragBench meta_data.pkl",
        "animals/dog_1": "ok",
        "animals/dog_2": "ok",
        "cat_1": "ok",
        "far/out_of_range": "target point 1 (500, 40) is outside the 96x80 image",
        "incomplete/only_image": "is not a sample folder",
        "nomask_1": "ok",
    }


def test_find_samples_both_layouts_recursively_sorted(tmp_path):
    expected = write_broken_dataset(tmp_path / "ds")
    found = R.find_samples(tmp_path / "ds")
    assert [s.rel for s in found] == sorted(expected)
    assert all(s.path == tmp_path / "ds" / s.rel for s in found)
    # a single sample folder is a dataset of one
    assert [s.rel for s in R.find_samples(tmp_path / "ds" / "cat_1")] == ["cat_1"]
    with pytest.raises(GoodDragError, match="no such folder"):
        R.find_samples(tmp_path / "missing")


def test_select_samples_filter_shard_limit():
    samples = [R.SampleRef(f"s{i}", Path(f"s{i}")) for i in range(7)]
    rels = lambda ss: [s.rel for s in ss]  # noqa: E731
    assert rels(R.select_samples(samples, shard=(1, 3))) == ["s1", "s4"]
    assert rels(R.select_samples(samples, shard=(0, 3), limit=2)) == ["s0", "s3"]
    assert rels(R.select_samples(samples, filter="s5")) == ["s5"]
    shards = [rels(R.select_samples(samples, shard=(i, 3))) for i in range(3)]
    assert sorted(sum(shards, [])) == rels(samples)  # shards cover every sample once
    assert R.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(GoodDragError, match="--shard"):
            R.parse_shard(bad)


# -------------------------------------------------- bench run, crashed and resumed
@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory, tiny_model_dir):
    """``bench run`` on 7 samples (3 broken): --limit 3, then a full run killed at cat_1, then a full run."""
    tmp = tmp_path_factory.mktemp("bench")
    expected = write_broken_dataset(tmp / "ds")
    out = tmp / "results"
    argv = ["run", tmp / "ds", "--out", out, "--model", tiny_model_dir, "--device", "cpu", "--no-progress",
            *TINY_FLAGS]
    edits: list[list[str]] = []
    real = R.edit_sample

    def counting(pipe, sample, *a, **k):
        if crash[0] and sample.rel == crash[0]:
            raise KeyboardInterrupt  # as if the machine went down in the middle of this sample
        done = real(pipe, sample, *a, **k)
        edits[-1].append(sample.rel)  # edited and written
        return done

    crash = [None]
    mtimes, rcs = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "edit_sample", counting)
        mp.setenv("GOODDRAG_CACHE", str(tmp / "cache"))
        for limit, crash_at in ((3, None), (None, "cat_1"), (None, None)):
            edits.append([])
            crash[0] = crash_at
            try:
                rcs.append(bench(*argv, *(["--limit", limit] if limit else [])))
            except KeyboardInterrupt:
                rcs.append("interrupted")
            mtimes.append({p.parent.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("run.json")})
    return SimpleNamespace(out=out, dataset=tmp / "ds", expected=expected, edits=edits, mtimes=mtimes, rcs=rcs,
                           argv=argv)


def test_bench_run_resumes_without_doing_a_sample_twice(bench_runs):
    good = sorted(rel for rel, what in bench_runs.expected.items() if what == "ok")
    assert bench_runs.edits == [["animals/dog_1", "animals/dog_2"], [], ["cat_1", "nomask_1"]]
    assert sorted(sum(bench_runs.edits, [])) == good  # each good sample edited exactly once
    assert bench_runs.rcs == [1, "interrupted", 1]  # 1: some samples failed
    # results written by the first run were not touched by the later ones
    first, second, last = bench_runs.mtimes
    assert set(first) == {"animals/dog_1", "animals/dog_2"}
    assert second == first
    assert {k: last[k] for k in first} == first
    assert sorted(last) == good


def test_bench_run_writes_what_gooddrag_edit_writes(bench_runs):
    for rel in ("animals/dog_1", "cat_1"):
        folder = bench_runs.out / rel
        assert set(RESULT_FILES) | {"mask.png"} == {p.name for p in folder.iterdir()}
        rec = json.loads((folder / "run.json").read_text())
        assert rec["inputs"]["benchmark"] == {"dataset": str(bench_runs.dataset.resolve()), "sample": rel}
        assert rec["config"]["resolution"] == TINY["resolution"]
        assert rec["command"][:2] == ["gooddrag", "bench"]
    assert not (bench_runs.out / "nomask_1" / "mask.png").exists()
    # nothing half-written was left behind by the interrupted run
    assert [p for p in bench_runs.out.rglob(".*")] == []


def test_bench_run_records_failures_and_goes_on(bench_runs):
    failures = R.read_failures(bench_runs.out)
    broken = {rel: what for rel, what in bench_runs.expected.items() if what != "ok"}
    assert [f["sample"] for f in failures] == sorted(broken)
    for f in failures:
        assert broken[f["sample"]] in f["error"], f
        assert f["error_type"] == "GoodDragError"
    lines = (bench_runs.out / R.FAILURES).read_text().splitlines()
    assert len(lines) == 1 + 1 + 3  # each run retried the broken samples it reached


def test_bench_run_manifest_and_refusal_of_other_settings(bench_runs, tiny_model_dir):
    manifest = json.loads((bench_runs.out / R.MANIFEST).read_text())
    assert manifest["dataset"] == str(bench_runs.dataset.resolve())
    assert manifest["method"] == "gooddrag"
    assert manifest["config"]["r1"] == TINY["r1"]
    assert manifest["model"]["model"] == str(tiny_model_dir)
    with pytest.raises(GoodDragError, match="other settings .config differ"):
        bench(*bench_runs.argv, "--r1", "3")
    with pytest.raises(GoodDragError, match="must not be inside the dataset"):
        bench(*bench_runs.argv[:3], bench_runs.dataset / "out", *bench_runs.argv[4:])


def test_bench_run_records_inputs_that_cannot_work_as_refused_and_counts_them(tmp_path, tiny_model_dir, capsys):
    write_drag100_sample(tmp_path / "ds" / "good")
    outside = write_drag100_sample(tmp_path / "ds" / "handle_outside")
    mask = np.zeros((80, 96), np.uint8)
    mask[:, 50:60] = 255  # the handle (38, 40) is left of it
    Image.fromarray(mask).save(outside / "mask.png")
    black = write_drag100_sample(tmp_path / "ds" / "black_mask")
    Image.fromarray(np.zeros((80, 96), np.uint8)).save(black / "mask.png")
    out = tmp_path / "results"
    lines: list[str] = []
    args = argparse.ArgumentParser(prog="gooddrag bench")
    register_commands(args.add_subparsers(dest="bench_command"))
    argv = ["run", tmp_path / "ds", "--out", out, "--model", tiny_model_dir, "--device", "cpu", "--no-progress",
            *TINY_FLAGS, "--lora-steps", "0", "--drag-end-step", "1"]
    parsed = args.parse_args([str(a) for a in argv])
    parsed.argv = ["bench", *map(str, argv)]
    assert run_command(parsed, say=lines.append) == 0  # refusals are recorded, not failures
    assert lines == [f"3 sample(s) selected: 1 edited, 0 already done, 0 failed, 2 refused (inputs that cannot "
                     f"work) (see {out / R.FAILURES}); results in {out}"]
    assert "refused: handle_outside: pair 1: its handle (38, 40) lies outside" in capsys.readouterr().err
    failures = {f["sample"]: f for f in R.read_failures(out)}
    assert sorted(failures) == ["black_mask", "handle_outside"]
    assert all(f["refused"] and f["error_type"] == "InputsCannotWorkError" for f in failures.values())
    assert failures["black_mask"]["error"].startswith("the mask marks nothing as editable")
    assert (out / "good" / "run.json").is_file() and not (out / "handle_outside").exists()
    assert bench("eval", out, "--metrics", "dai", "--no-progress") == 0
    text = (out / "eval" / "summary.md").read_text()
    assert "failed in the run: 0; refused (inputs that cannot work): 2" in text
    assert "## Refused in the run: inputs that cannot work" in text and "- handle_outside: pair 1" in text


# ------------------------------------------------------------------------ DIFT
@pytest.fixture(scope="module")
def dift(tiny_model_dir):
    from gooddrag.benchmark.dift import DiftFeaturizer

    return DiftFeaturizer(str(tiny_model_dir), device="cpu", ensemble=3)


def test_dift_features_are_the_up_block_output_averaged_over_the_ensemble(dift):
    from gooddrag.models.features import FeatureHook

    image = make_image(64, 64)
    feats = dift(image, "a disc")
    unet = dift.unet
    assert feats.shape == (1, unet.up_blocks[1].resnets[-1].out_channels, 4, 4)  # 64 px / 8 / 2 (one upsample)
    assert torch.equal(feats, dift(image, "a disc"))  # seeded
    # the same computation with a full forward pass and FeatureHook (block index = up_ft_index + 1)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None].expand(3, -1, -1, -1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        dist = dift.vae.encode(x).latent_dist
        lat = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * dift.vae.config.scaling_factor
        noisy = dift.alpha_bar ** 0.5 * lat + (1 - dift.alpha_bar) ** 0.5 * torch.randn(lat.shape, generator=g)
        text = dift.sd.encode_prompt("a disc", "cpu", 1, False)[0].expand(3, -1, -1)
        with FeatureHook(unet, 2) as hook:
            unet(noisy, torch.tensor(261), encoder_hidden_states=text)
    assert torch.allclose(feats, hook.output.mean(0, keepdim=True), atol=1e-6)
    assert not unet.up_blocks[1]._forward_hooks  # the hook is removed


def test_dift_settings_are_checked(tiny_model_dir):
    from gooddrag.benchmark.dift import DiftFeaturizer

    with pytest.raises(GoodDragError, match="up_ft_index=4 is out of range"):
        DiftFeaturizer(str(tiny_model_dir), device="cpu", up_ft_index=4)
    with pytest.raises(GoodDragError, match="t=1000"):
        DiftFeaturizer(str(tiny_model_dir), device="cpu", t=1000)


# -------------------------------------------------------------------------- IF
def random_lpips_files(folder: Path) -> tuple[Path, Path]:
    """Random AlexNet (torchvision key names) and LPIPS head weights, for offline tests."""
    torch.manual_seed(0)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    alex = {}
    for i, s in shapes.items():
        alex[f"features.{i}.weight"] = torch.randn(s) * (2 / (s[1] * s[2] * s[3])) ** 0.5
        alex[f"features.{i}.bias"] = torch.zeros(s[0])
    alex["classifier.1.weight"] = torch.zeros(1)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(alex, folder / "alexnet.pth")
    torch.save(lin, folder / "alex_lin.pth")
    return folder / "alexnet.pth", folder / "alex_lin.pth"


def test_image_fidelity_with_random_weights(tmp_path):
    alex, lin = random_lpips_files(tmp_path)
    model = M.load_lpips_alex(alex, lin)
    a = make_image(96, 80, seed=0)
    assert M.image_fidelity(a, a, model) == pytest.approx(1.0)
    b = Image.fromarray(255 - np.asarray(a))
    assert M.image_fidelity(a, b, model) < 1.0


def test_image_fidelity_errors_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(GoodDragError) as err:
        M.alexnet_weights_path(None, download=False)
    assert M.ALEXNET_URL in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(GoodDragError, match="no such file"):
        M.load_lpips_alex(tmp_path / "none.pth", tmp_path / "none.pth")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GoodDragError, match="pip install --no-deps lpips"):
        M.lpips_weights_path(None)


def test_our_lpips_equals_the_lpips_package(tmp_path):
    """Same weights, same numbers as ``lpips.LPIPS(net='alex')``: its outputs on seeded random AlexNet and
    head weights were computed once with the real package (tests/golden/make_lpips_golden.py, in an
    environment with torchvision) and stored in tests/golden/lpips_alex.json; ours must match them."""
    from tests.golden import lpips_case as C

    golden = json.loads((Path(__file__).parent / "golden" / "lpips_alex.json").read_text())
    assert C.checksums() == pytest.approx(golden["checksums"], rel=1e-12)  # the same weights and inputs
    torch.save({k: torch.from_numpy(v) for k, v in C.alex_weights().items()}, tmp_path / "alexnet.pth")
    torch.save({k: torch.from_numpy(v) for k, v in C.lin_weights().items()}, tmp_path / "alex_lin.pth")
    ours = M.load_lpips_alex(tmp_path / "alexnet.pth", tmp_path / "alex_lin.pth")
    with torch.no_grad():
        got = [ours(torch.from_numpy(a), torch.from_numpy(b)).double().tolist() for a, b in C.input_pairs()]
    for g, want in zip(got, golden["distances"], strict=True):
        assert g == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.may_skip_in_ci  # the one test that needs AlexNet's downloaded weights
def test_image_fidelity_with_the_real_weights():
    """Runs only where torchvision's AlexNet weights are in torch hub's cache and lpips is installed."""
    try:
        model = M.load_lpips_alex(download=False)
    except GoodDragError as err:
        pytest.skip(str(err))
    a = make_image(96, 80)
    assert M.image_fidelity(a, a, model) == pytest.approx(1.0)


# ------------------------------------------------------------- eval and compare
@pytest.fixture(scope="module")
def evaluated(bench_runs, tiny_model_dir, tmp_path_factory):
    """``bench eval`` with DAI, MD (tiny model as DIFT) and IF (random LPIPS weights)."""
    alex, lin = random_lpips_files(tmp_path_factory.mktemp("lpips"))
    common = ["--dift-model", tiny_model_dir, "--device", "cpu", "--no-progress", "--dift-ensemble", "2"]
    rc = bench("eval", bench_runs.out, "--metrics", "dai,md,if", "--alexnet-weights", alex, "--lpips-weights", lin,
               *common)
    rc_authors = bench("eval", bench_runs.out, "--metrics", "dai", "--dai-authors-variant", "--gamma", "1,5",
                       "--dataset", bench_runs.dataset, "--eval-out", bench_runs.out / "eval-authors", *common)
    return SimpleNamespace(rc=rc, rc_authors=rc_authors, out=bench_runs.out / "eval",
                           authors=bench_runs.out / "eval-authors")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_end_to_end(evaluated, bench_runs, capsys):
    assert evaluated.rc == 0
    rows = read_csv(evaluated.out / "metrics.csv")
    assert [r["sample"] for r in rows] == ["animals/dog_1", "animals/dog_2", "cat_1", "nomask_1"]
    assert [r["category"] for r in rows] == ["animals", "animals", "cat", "nomask"]
    for r in rows:
        folder = bench_runs.out / r["sample"]
        for g in (1, 5, 10, 20):
            assert float(r[f"dai_g{g}"]) == pytest.approx(M.dai(
                Image.open(folder / "input.png"), Image.open(folder / "edited.png"), [POINTS[0]], [POINTS[1]], g))
        assert 0 <= float(r["md"]) < 130 and r["if"] != "" and float(r["if"]) <= 1.0
        new = json.loads((folder / "new_points.json").read_text())
        assert float(r["final_distance"]) == pytest.approx(
            float(M.pair_distances(new["new_handle_points"], new["target_points"])[0]))
    matches = [json.loads(line) for line in (evaluated.out / "matches.jsonl").read_text().splitlines()]
    assert [m["sample"] for m in matches] == [r["sample"] for r in rows]
    assert [float(r["md"]) for r in rows] == pytest.approx([m["distances"][0] for m in matches])
    summary = json.loads((evaluated.out / "summary.json").read_text())
    assert summary["summary"]["mean"]["dai_g1"] == pytest.approx(np.mean([float(r["dai_g1"]) for r in rows]))
    assert summary["summary"]["categories"]["animals"]["samples"] == 2
    assert summary["info"]["dift"]["t"] == 261 and summary["info"]["dift"]["up_ft_index"] == 1
    text = (evaluated.out / "summary.md").read_text()
    assert "DAI variant: ours: mean over the pairs" in text
    assert "failed in the run: 3" in text and "far/out_of_range" in text
    if importlib.util.find_spec("matplotlib"):
        assert (evaluated.out / "categories.png").stat().st_size > 0
        assert (evaluated.out / "final_distances.png").stat().st_size > 0


def test_eval_authors_variant_with_the_dataset(evaluated, bench_runs):
    assert evaluated.rc_authors == 0
    ours = {r["sample"]: r for r in read_csv(evaluated.out / "metrics.csv")}
    for r in read_csv(evaluated.authors / "metrics.csv"):
        # one pair per sample, patches inside the image: both variants agree; originals from the dataset
        assert float(r["dai_g1"]) == pytest.approx(float(ours[r["sample"]]["dai_g1"]))
        assert "md" not in r and "dai_g10" not in r
    text = (evaluated.authors / "summary.md").read_text()
    assert "DAI variant: authors' script: divided by the number of pairs twice" in text
    assert "not run: 0" in text


def test_compare_two_reports(tmp_path, capsys):
    def report(folder: Path, dai_values, authors: bool):
        rows = [{"sample": f"c{i % 2}/s{i}", "category": f"c{i % 2}", "pairs": 1, "dai_g1": v, "if": 0.5}
                for i, v in enumerate(dai_values)]
        info = {"results": str(folder), "metrics": ["dai", "if"], "columns": ["dai_g1", "if"],
                "dai_authors_variant": authors, "errors": [], "failures": [], "failed": 0, "method": "m"}
        E.write_report(folder / "eval", rows, [], E.summarize(rows, info["columns"]), info)

    report(tmp_path / "a", [0.4, 0.2, 0.3], False)
    report(tmp_path / "b", [0.2, 0.2], False)  # one sample fewer
    text = E.compare_markdown(tmp_path / "a", tmp_path / "b")
    assert "Means over the 2 sample(s) scored in both" in text
    assert "| dai_g1 | 0.3000 | 0.2000 | -0.1000 | B |" in text
    assert "| if | 0.5000 | 0.5000 | +0.0000 | - |" in text
    assert "| c0 | 1 | 0.4000 / 0.2000 (-0.2000) |" in text
    assert "1 sample(s) scored in only one of the two are left out" in text
    report(tmp_path / "b", [0.2, 0.2], True)
    assert "different DAI variants" in E.compare_markdown(tmp_path / "a", tmp_path / "b")
    assert bench("compare", tmp_path / "a", tmp_path / "b") == 0
    assert "| dai_g1 |" in capsys.readouterr().out
    with pytest.raises(GoodDragError, match="run `gooddrag bench eval"):
        E.compare_markdown(tmp_path / "a", tmp_path / "none")


def test_eval_argument_errors(tmp_path, bench_runs):
    with pytest.raises(GoodDragError, match="unknown metric"):
        bench("eval", bench_runs.out, "--metrics", "dai,fid")
    with pytest.raises(GoodDragError, match="--gamma"):
        bench("eval", bench_runs.out, "--gamma", "1,x")
    with pytest.raises(GoodDragError, match="no result folders"):
        bench("eval", tmp_path)
    with pytest.raises(GoodDragError, match="no such file"):
        bench("eval", bench_runs.out, "--metrics", "if", "--alexnet-weights", tmp_path / "x.pth",
              "--lpips-weights", tmp_path / "x.pth")


# ------------------------------------------------------------------------- Ray
class FakeRay:
    """Stands in for the ``ray`` module: runs each task when it is submitted, in this process.
    ``die``: samples whose task fails as one would after Ray used up its retries on dead workers."""

    def __init__(self, gpus: float = 0.0, die: tuple[str, ...] = ()):
        self.gpus, self.die, self.calls, self.options, self.inits, self.shut = gpus, die, [], [], [], False
        self.most_in_flight, self.in_flight = 0, 0

    class Ref:
        def __init__(self, value):
            self.value = value

    def init(self, **kwargs):
        self.inits.append(kwargs)

    def cluster_resources(self):
        return {"CPU": 2.0} | ({"GPU": self.gpus} if self.gpus else {})

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kw):
                fake.options.append(kw)
                return self

            def remote(self, *args):
                fake.calls.append(args[1])
                fake.in_flight += 1
                fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
                if args[1] in fake.die:
                    return FakeRay.Ref(RuntimeError("the worker died 4 times"))
                try:
                    return FakeRay.Ref(fn(*args))
                except Exception as err:  # noqa: BLE001
                    return FakeRay.Ref(err)

        return Task()

    def wait(self, refs, num_returns, timeout):
        assert num_returns == 1
        return refs[:1], refs[1:]

    def get(self, ref):
        self.in_flight -= 1
        if isinstance(ref.value, Exception):
            raise ref.value
        return ref.value

    def shutdown(self):
        self.shut = True


def test_bench_run_on_ray_makes_a_task_per_sample_and_records_lost_ones(tmp_path, tiny_model_dir, monkeypatch,
                                                                        capsys):
    ds = tmp_path / "ds"
    for rel in ("a/s_1", "a/s_2", "b/s_3"):
        write_dragbench_sample(ds / rel)
    bad = write_drag100_sample(ds / "b" / "s_4")
    (bad / "points.json").write_text(json.dumps({"points": [[38, 40], [38, 400]]}))
    out = tmp_path / "results"
    argv = ["run", ds, "--out", out, "--model", tiny_model_dir, "--device", "cpu", "--no-progress", *TINY_FLAGS,
            "--ray", "auto", "--ray-workers", "2"]
    edited = []
    real = R.edit_sample

    def counting(pipe, sample, *a, **k):
        done = real(pipe, sample, *a, **k)
        edited.append(sample.rel)
        return done

    monkeypatch.setattr(R, "edit_sample", counting)
    monkeypatch.setattr(R, "_WORKER_PIPELINE", {})
    fake = FakeRay(die=("a/s_1",))
    monkeypatch.setitem(sys.modules, "ray", fake)
    capsys.readouterr()
    assert bench(*argv) == 1
    assert fake.inits == [{"address": "auto"}] and fake.shut
    assert fake.calls == ["a/s_1", "a/s_2", "b/s_3", "b/s_4"]  # one task per sample, in sorted order
    assert fake.options == [{"num_gpus": 0.0, "num_cpus": 1, "max_retries": 3}]
    assert fake.most_in_flight == 2  # --ray-workers 2
    assert edited == ["a/s_2", "b/s_3"]  # the lost sample and the broken one have no result
    failures = R.read_failures(out)
    assert [f["sample"] for f in failures] == ["a/s_1", "b/s_4"]
    assert failures[0]["error"] == "the worker died 4 times"
    printed = capsys.readouterr()
    assert "2 failed (1 lost with their Ray workers)" in printed.out
    assert "lost on Ray after 3 retries: a/s_1: RuntimeError: the worker died 4 times" in printed.err

    # run again: only the lost and the broken sample are left; GPUs in the cluster -> one GPU a task
    fake = FakeRay(gpus=4)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert bench(*argv[:-2], "--ray-retries", "1") == 1  # exit 1: b/s_4 still fails
    assert fake.calls == ["a/s_1", "b/s_4"]
    assert fake.options == [{"num_gpus": 1.0, "num_cpus": 1, "max_retries": 1}]
    assert sorted(edited) == ["a/s_1", "a/s_2", "b/s_3"]  # each once
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("run.json")) == ["a/s_1", "a/s_2", "b/s_3"]


def test_bench_run_ray_errors(tmp_path, monkeypatch):
    write_drag100_sample(tmp_path / "ds" / "s_1")
    argv = ["run", tmp_path / "ds", "--out", tmp_path / "out", "--ray", "local"]
    with pytest.raises(GoodDragError, match="--shard and --ray do not combine"):
        bench(*argv, "--shard", "0/2")
    with pytest.raises(GoodDragError, match="--ray-workers must be at least 1"):
        bench(*argv, "--ray-workers", "0")
    with pytest.raises(GoodDragError, match="--ray-retries must be >= 0, got -1"):
        bench(*argv, "--ray-retries", "-1")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GoodDragError, match="pip install ray"):
        bench(*argv)


def _kill_first_ray_task(results: Path, stop: threading.Event, killed: list) -> None:
    """Once a first sample is done, SIGKILL a Ray worker process in the middle of a task."""
    while not stop.is_set() and not killed:
        if any(results.rglob("run.json")):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if cmdline.read_bytes().startswith(b"ray::edit_on_ray"):
                        os.kill(int(cmdline.parent.name), signal.SIGKILL)
                        killed.append(int(cmdline.parent.name))
                        return
                except (OSError, ValueError):
                    continue
        time.sleep(0.05)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray's workers through /proc")
def test_bench_run_on_a_real_local_ray_survives_a_killed_worker(tmp_path, tiny_model_dir):
    """Real Ray on this machine (two CPU workers): a worker killed mid-run; Ray retries its sample elsewhere
    and the run completes with every result, each written once."""
    rels = ["a/s_1", "a/s_2", "b/s_3", "b/s_4", "b/s_5", "b/s_6"]
    for rel in rels:
        write_dragbench_sample(tmp_path / "ds" / rel)
    out = tmp_path / "results"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_ray_task, args=(out, stop, killed), daemon=True)
    killer.start()
    try:
        rc = bench("run", tmp_path / "ds", "--out", out, "--model", tiny_model_dir, "--device", "cpu",
                   "--no-progress", *TINY_FLAGS, "--ray", "local", "--ray-workers", "2")
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray task was caught running"
    assert rc == 0
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("run.json")) == rels
    assert not (out / R.FAILURES).exists()
