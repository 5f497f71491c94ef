"""Regenerate the golden values and re-measure the behaviour tests' numbers, in one command:

    python -m tests.golden.regenerate          # from the repository root

Writes, next to this file:
- ``tiny.json``: the tiny random model's runs (tests/test_golden.py compares them);
- ``shapes.json``: the shapes-64 run ``cases.SHAPES_GOLDEN`` (tests/test_behaviour.py compares it);
- ``behaviour.json``: relative error and PSNRs of every shapes-64 run of tests/test_behaviour.py,
  and the difference mutual self-attention makes. These are not compared; the bounds in
  tests/test_behaviour.py are set from them with a margin (each bound's comment quotes them),
  so after a change to the engine look at this file's diff and move the bounds if the change is meant.

Runs on one torch thread, like the tests (about 40 s on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local, as in the tests

HERE = Path(__file__).resolve().parent


def _made_with() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    versions = {name: metadata.version(name) for name in ("torch", "diffusers", "peft")}
    return {"command": "python -m tests.golden.regenerate", "git_head": commit or None, **versions}


def _write(name: str, data: dict) -> None:
    (HERE / name).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {HERE / name}")


def main() -> int:
    torch.set_num_threads(1)  # as tests/conftest.py does
    from gooddrag import DragPipeline
    from gooddrag.shapes.bench import load_shapes_pipeline
    from gooddrag.testing import save_tiny_pipeline
    from tests.golden import cases

    with tempfile.TemporaryDirectory(prefix="gooddrag-golden-") as tmp:
        tmp = Path(tmp)
        tiny = DragPipeline.from_pretrained(str(save_tiny_pipeline(tmp / "tiny-sd")), device="cpu")
        _write("tiny.json", {"made_with": _made_with()} | {
            method: cases.tiny_run(tiny, method, tmp / f"lora-tiny-{method}").golden() for method in cases.TINY_RUNS
        })

        pipe = load_shapes_pipeline()
        measured = {}
        runs = {}
        for name, variant in cases.SHAPES_RUNS:
            case = cases.shapes_case(name)
            runs[name, variant] = cases.shapes_run(pipe, case, variant, tmp / f"lora-{name}")
            measured[f"{name}/{variant}"] = cases.shapes_scores(runs[name, variant], case)
            print(name, variant, measured[f"{name}/{variant}"], flush=True)
        golden = runs[cases.SHAPES_GOLDEN].golden()
        for name in cases.SHAPES_CASES:
            if (name, "no_mutual") in runs:
                measured[f"{name}/mutual_attention_mean_abs_difference"] = cases.mean_abs_difference(
                    runs[name, "gooddrag"], runs[name, "no_mutual"])
        _write("shapes.json", {"made_with": _made_with(), "run": "/".join(cases.SHAPES_GOLDEN)} | golden)
        _write("behaviour.json", {"made_with": _made_with()} | measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
