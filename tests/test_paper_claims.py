"""research/paper_claims.py (issue P1a) end to end on 2 shapes cases with few steps: the files it
writes, and that its table's figures are those of its own runs (claims.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "research" / "paper_claims.py"


def test_paper_claims_on_one_case(tmp_path):
    out = tmp_path / "claims"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "100:1", "--jobs", "1", "--rounds", "2", "--out", str(out),
         "--set", "lora_steps=0", "--set", "num_inference_steps=10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("claims.md", "claims.json", "claims-aidd-trajectory.png", "claims-noise.png",
                 "claims-motion-supervision.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "claims.json").read_text())
    assert {r["method"] for r in data["rows"]} == {"aidd", "drag_then_denoise", "eq4_1step", "eq8_1step"}
    assert len(data["rows"]) == 4 and len(data["noise"]) == 1
    # the same total budget: 7 x 2 x 3 against 1 x 14 x 3 optimiser steps (the preset's 10 rounds: 7 x 10 x 3)
    v = data["variants"]
    assert v["aidd"]["track_per_step"] == 2
    assert v["drag_then_denoise"]["drag_end_step"] == 1 and v["drag_then_denoise"]["track_per_step"] == 14
    assert v["eq4_1step"] == {"track_per_step": 2, "information_preserving": False, "max_drag_per_track": 1,
                              "lora_steps": 0, "num_inference_steps": 10}
    # 8 inverted steps at 10: a trajectory point per denoising step
    assert all(len(t) == 8 for runs in data["trajectories"].values() for t in runs)
    table = (out / "claims.md").read_text()
    for method, label in (("aidd", "AIDD"), ("eq8_1step", "Eq. 8, 1 step")):
        rows = [r for r in data["rows"] if r["method"] == method]
        line = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
        psnr = np.mean([min(r["psnr_in_mask"], 100.0) for r in rows])
        assert f"| {psnr:.2f} |" in line, (line, psnr)
    noise_line = next(line for line in table.splitlines() if line.startswith("| 1.0 |"))
    k10 = np.median([row["1.0/10"] for row in data["noise"]])
    assert f"{k10:.2f} (" in noise_line.split("|")[-2]
