"""What each memory cut of issue P4 buys, measured by the simulator (``gooddrag bench estimate``).

For a model and resolution, the default edit and the edit with one cut undone at a time:
``--lora-micro-batch`` = the LoRA batch (one forward pass a step, as before) and the text encoders
kept on the device (``DragPipeline.offload_text_encoders`` False). Cuts the simulator cannot undo
(code, not settings) are listed in docs/benchmarks.md with their bytes.

    python research/estimate_cuts.py --model sdxl --resolution 1024 --json cuts-sdxl.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gooddrag.benchmark import estimate_sim as E  # noqa: E402

GIB = 2**30


def variants(model: str, resolution: int, low_memory: bool) -> dict[str, E.Request]:
    base = E.Request(model=model, resolution=resolution, low_memory=low_memory)
    return {
        "default": base,
        "LoRA in one pass a step": E.Request(**{**vars(base), "lora_micro_batch": 4}),
        "text encoders kept on the device": E.Request(**{**vars(base), "offload_text_encoders": False}),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--low-memory", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    out = {}
    for name, request in variants(args.model, args.resolution, args.low_memory).items():
        report = E.estimate(request, progress=False, jobs=args.jobs)
        out[name] = {"peak_bytes": report["peak_bytes"], "peak_phase": report["peak_phase"],
                     "phases": {k: v["peak_bytes"] for k, v in report["phases"].items()}, "flops": report["flops"]}
        print(f"{name:<36} peak {report['peak_bytes'] / GIB:6.2f} GiB in {report['peak_phase']:<9} "
              + " ".join(f"{k} {v['peak_bytes'] / GIB:.2f}" for k, v in report["phases"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
