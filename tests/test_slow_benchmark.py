"""``-m slow``: the shapes benchmark as a regression test (5-11 min on one CPU thread, idle to loaded machine).

Runs ``gooddrag bench shapes --cases 10 --seed 0 --method gooddrag,gooddrag-plus,dragdiffusion,identity`` on the
shipped shapes-64 model and compares each method's summary with the numbers in the block below,
within the margins below. A change of the engine that moves them on purpose must update the block
(and docs/benchmarks.md, which publishes the 50-case run of the same command) in the same commit.
"""

from __future__ import annotations

import json

import pytest

from gooddrag.cli import main

# ======================== EXPECTED VALUES: update after a deliberate engine change ========================
# Source: the command above, on git MEASURED_AT, CPU, one torch thread (OMP_NUM_THREADS=1); the
# summary.json it writes. Keys are those of gooddrag.shapes.metrics.summarize.
MEASURED_AT = "eb800d4"  # after P1 parity (72bef00) and the DragDiffusion LoRA batch 4 (dd5fc76); same at c23975b
BENCH = dict(cases=10, seed=0)
EXPECTED = {
    "gooddrag": {"median_relative_error": 0.1252, "success_rate": 0.9, "mean_psnr_outside_mask": 33.50},
    "dragdiffusion": {"median_relative_error": 0.8277, "success_rate": 0.0, "mean_psnr_outside_mask": 35.27},
    # the first 10 cases of the 50-case run of 2026-12-03 (docs/benchmarks.md, "GoodDrag+"), presets as in 03c8ca4
    "gooddrag-plus": {"median_relative_error": 0.0750, "success_rate": 0.9, "mean_psnr_outside_mask": 34.15,
                      "mean_shape_psnr": 20.45},
}
MARGIN = {
    "median_relative_error": 0.08,  # of the drag distance (the 10 cases' drags are 6-16 px)
    "success_rate": 0.21,  # two cases of ten either way
    "mean_psnr_outside_mask": 1.5,  # dB
    "mean_shape_psnr": 1.5,  # dB
}
# ============================================================================================================


@pytest.mark.slow
def test_shapes_benchmark_matches_the_published_numbers(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "shapes", "--cases", str(BENCH["cases"]), "--seed", str(BENCH["seed"]),
                 "--method", "gooddrag,gooddrag-plus,dragdiffusion,identity", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # doing nothing scores the whole distance and a perfect outside (sanity of the scorer)
    assert summary["identity"]["median_relative_error"] == pytest.approx(1.0, abs=0.05)
    off = []
    for method, expected in EXPECTED.items():
        for key, want in expected.items():
            got = summary[method][key]
            if not abs(got - want) <= MARGIN[key]:
                off.append(f"{method} {key}: {got:.4f}, expected {want:.4f} +- {MARGIN[key]}")
    assert not off, ("shapes benchmark moved (update the EXPECTED block of tests/test_slow_benchmark.py and "
                     "docs/benchmarks.md if that is meant):\n" + "\n".join(off) + "\n" + (out / "results.md").read_text())
    # GoodDrag must stay clearly better than the baseline at moving the object, GoodDrag+ at keeping its shape
    assert summary["gooddrag"]["median_relative_error"] < summary["dragdiffusion"]["median_relative_error"]
    assert summary["gooddrag-plus"]["mean_shape_psnr"] > summary["gooddrag"]["mean_shape_psnr"] + 2.0
