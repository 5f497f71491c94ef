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

    python -m tests.golden.regenerate --spread  # then also re-measure spread.json

``--spread`` runs the same cases once more under every kernel set of ``tests/golden/kernels.py``
(each in a child process) and writes ``spread.json``: for every stored number, the largest
difference between two kernel sets, and whether every count, name and handle came out the same.
The tolerances in ``tests/golden/cases.py`` are set from it (tests/golden/README.md).
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


OUT = HERE


def _write(name: str, data: dict) -> None:
    (OUT / name).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT / name}")


def main(argv=None) -> int:
    global OUT
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="folder to write the JSON files to (default: tests/golden)")
    p.add_argument("--spread", action="store_true",
                   help="also run under every kernel set of tests/golden/kernels.py and write spread.json")
    args = p.parse_args(argv)
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    if args.spread:
        _write_spread()
    torch.set_num_threads(1)  # as tests/conftest.py does
    from gooddrag import DragPipeline
    from gooddrag.models.tiny import save_tiny_pipeline
    from gooddrag.shapes.benchmark import load_shapes_pipeline
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


def _write_spread() -> None:
    """Run the cases under every kernel set (child processes, one at a time) and write spread.json."""
    from tests.golden.kernels import PROFILES

    runs = {}
    with tempfile.TemporaryDirectory(prefix="gooddrag-spread-") as tmp:
        for name, env in PROFILES.items():
            folder = Path(tmp) / name
            print(f"kernel set {name}: {env or '(as the CPU allows)'}", flush=True)
            subprocess.run([sys.executable, "-m", "tests.golden.regenerate", "--out", str(folder)], check=True,
                           cwd=HERE.parents[1], env=dict(os.environ, **env), stdout=subprocess.DEVNULL)
            runs[name] = {f: json.loads((folder / f).read_text()) for f in ("tiny.json", "shapes.json", "behaviour.json")}
    spread = {"made_with": _made_with() | {"command": "python -m tests.golden.regenerate --spread"},
              "kernel_sets": PROFILES}
    for f in ("tiny.json", "shapes.json", "behaviour.json"):
        spread[f] = spread_of([runs[name][f] for name in PROFILES])
    _write("spread.json", spread)


def spread_of(values: list):
    """For float leaves (and float lists, flattened): the largest |a - b| over the runs; for
    anything else (counts, names, handle lists compared whole): "same" or "differs"."""
    first = values[0]
    if isinstance(first, dict):
        return {k: spread_of([v[k] for v in values]) for k in first if k != "made_with"}
    flat = [_flatten(v) for v in values]
    if all(isinstance(x, float) for x in flat[0]) and flat[0]:
        return max(abs(a - b) for f in flat for g in flat for a, b in zip(f, g))
    return "same" if all(f == flat[0] for f in flat) else "differs"


def _flatten(v) -> list:
    if isinstance(v, list):
        return [x for item in v for x in _flatten(item)]
    return [v]


if __name__ == "__main__":
    sys.exit(main())
