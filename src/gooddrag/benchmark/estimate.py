"""``gooddrag bench estimate``: memory and compute of one whole edit at real size, on any machine.

The edit of a method's preset (LoRA training, inversion, every drag step and tracking of its
schedule with the early stops off, the batched denoising with mutual self-attention, decoding) runs
through :class:`gooddrag.DragPipeline` on the real architecture, built from its published configs
(``sd15``, ``sd21``, ``sdxl``, ``sd35-medium``, ``flux1-dev``) or a diffusers folder's, with no
weights and no arithmetic (PyTorch's fake tensors; :mod:`.estimate_sim` says how, and what gets
stand-in values). It reports, per phase and in all, the peak device memory (what
``torch.cuda.max_memory_allocated`` would say: weights, activations, what autograd saves,
gradients, optimiser state, in the CUDA allocator's 512-byte blocks), the FLOPs
(``torch.utils.flop_counter``'s formulas) and the aten operators dispatched, and the floor an H100
puts on the time (the FLOPs at its dense bf16 peak). Not counted: CUDA's own workspaces (cuBLAS,
cuDNN), the allocator's cached but free blocks, the CUDA context.

Importing this module loads no torch; the simulator is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import GoodDragError

ARCHITECTURES = ("sd15", "sd21", "sdxl", "sd35-medium", "flux1-dev")
"""The built-in architectures (``estimate_models.BUILTIN``, which a test keeps equal)."""
METHODS = ("gooddrag", "dragdiffusion", "gooddrag-plus")
"""The methods the simulator runs (AIDD's: FreeDrag's line search decides its own schedule)."""
GIB = 2**30
HELP = "simulated peak memory, FLOPs and operators of one edit at real size (no GPU, no weights)"


def add_estimate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gooddrag bench estimate``."""
    p.add_argument("--model", default="sd15",
                   help="sd15, sd21, sdxl, sd35-medium (stabilityai/stable-diffusion-3.5-medium), flux1-dev "
                        "(black-forest-labs/FLUX.1-dev) (their published configs) or a diffusers folder (its "
                        "configs; no weights are read) (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=None,
                   help="working side in px (default: the preset's: 512 for SD, 1024 for SDXL, SD3 and FLUX)")
    p.add_argument("--method", default="gooddrag", choices=METHODS,
                   help="the method, with its preset for the model (default: %(default)s)")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                   help="weights' dtype, as gooddrag edit --dtype (default: %(default)s)")
    p.add_argument("--low-memory", action="store_true", help="as gooddrag edit --low-memory (default: off)")
    p.add_argument("--lora-batch-size", type=int, default=None,
                   help="images per LoRA step, as gooddrag edit (changes the LoRA; default: the preset's)")
    p.add_argument("--lora-micro-batch", type=int, default=None,
                   help="images per LoRA forward pass, the gradients added up (the same LoRA up to float "
                        "order; default: the pipeline's, DragPipeline.lora_micro_batch)")
    p.add_argument("--jobs", type=int, default=2,
                   help="processes the short simulated runs are spread over (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report here (default: print only)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")


def cmd_estimate(args, say) -> int:
    """``gooddrag bench estimate``: prints the table, writes ``--json``; exit 0."""
    for flag, value in (("--jobs", args.jobs), ("--lora-micro-batch", args.lora_micro_batch),
                        ("--lora-batch-size", args.lora_batch_size)):
        if value is not None and value < 1:  # refused before any work
            raise GoodDragError(f"{flag} must be at least 1, got {value}")
    # heavy: torch, diffusers, transformers
    from .estimate_sim import Request, estimate

    request = Request(model=args.model, resolution=args.resolution, method=args.method, dtype=args.dtype,
                      low_memory=args.low_memory, lora_batch_size=args.lora_batch_size,
                      lora_micro_batch=args.lora_micro_batch)
    report = estimate(request, progress=not args.no_progress, jobs=args.jobs)
    for line in summary_lines(report):
        say(line)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return 0


def summary_lines(report: dict) -> list[str]:
    """The report as a table: one line a phase, then the whole edit and the H100 floor."""
    side = report.get("working_size", report["resolution"])
    size = f"{report['resolution']} px" + (f" (works at {side}x{side})" if side != report["resolution"] else "")
    head = (f"simulated: {report['model']} ({report['backbone']}), {report['method']}, {size}, "
            f"{report['dtype']}{', low memory' if report['low_memory'] else ''}, LoRA batch "
            f"{report['lora_batch_size']} in passes of {report['lora_micro_batch']}")
    lines = [head, f"{'phase':<10} {'peak GiB':>9} {'TFLOP':>10} {'operators':>11}"]
    for name, fig in report["phases"].items():
        lines.append(f"{name:<10} {fig['peak_bytes'] / GIB:>9.2f} {fig['flops'] / 1e12:>10.1f} {fig['ops']:>11,}")
    lines.append(f"{'edit':<10} {report['peak_bytes'] / GIB:>9.2f} {report['flops'] / 1e12:>10.1f} "
                 f"{report['ops']:>11,}   (peak in {report['peak_phase']})")
    lines.append(f"H100 floor (dense bf16 peak): {report['h100_bf16_floor_seconds']:.2f} s; "
                 f"simulated in {report['wall_seconds']:.0f} s")
    return lines


__all__ = ["ARCHITECTURES", "METHODS", "add_estimate_arguments", "cmd_estimate", "summary_lines"]
