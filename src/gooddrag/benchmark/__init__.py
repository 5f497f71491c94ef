"""Benchmarks on real data sets, and the cost of an edit: ``gooddrag bench run | eval | compare | estimate``.

- :mod:`.runner`: edit every sample of a Drag100 / DragBench folder, resumable, shardable;
- :mod:`.metrics`: DAI, MD's matching step, IF = 1 - LPIPS(alex) (pure functions);
- :mod:`.dift`: DIFT features for MD (a Stable Diffusion UNet through a forward hook);
- :mod:`.evaluate`: ``bench eval`` and ``bench compare``: the order of the work, arguments, what is printed;
  :mod:`.scoring` (find and score the results, means), :mod:`.report` (CSV / JSON / markdown, the compare
  table), :mod:`.plots` (matplotlib) and :mod:`.judging` (GScore's part of ``bench eval``) do the work;
- :mod:`.gscore`: GScore, a vision-language judge on an OpenAI-compatible endpoint (cached, resumable);
- :mod:`.estimate`: ``bench estimate``, memory and compute of one edit at real size without a GPU
  (:mod:`.estimate_sim` runs the pipeline on fake tensors of :mod:`.estimate_models`, counted by
  :mod:`.estimate_counters`).

Importing this package, :mod:`.runner` or :mod:`.evaluate` loads no model
and no torch of its own; the CLI hooks are re-exported here.
"""

from __future__ import annotations

import argparse

from .estimate import HELP as ESTIMATE_HELP
from .estimate import add_estimate_arguments, cmd_estimate
from .evaluate import add_compare_arguments, add_eval_arguments, cmd_compare, cmd_eval
from .runner import add_run_arguments, cmd_run

__all__ = [
    "add_compare_arguments",
    "add_estimate_arguments",
    "add_eval_arguments",
    "add_run_arguments",
    "cmd_compare",
    "cmd_estimate",
    "cmd_eval",
    "cmd_run",
    "register_commands",
    "run_command",
]

COMMANDS = {
    "run": ("edit every sample of a Drag100 / DragBench folder (resumable)", add_run_arguments, cmd_run),
    "eval": ("score results folders: DAI, MD (DIFT), IF (LPIPS), GScore (a VLM judge)", add_eval_arguments,
             cmd_eval),
    "compare": ("two evaluated results folders side by side", add_compare_arguments, cmd_compare),
    "estimate": (ESTIMATE_HELP, add_estimate_arguments, cmd_estimate),
}


def register_commands(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``run``, ``eval``, ``compare`` and ``estimate`` to the ``gooddrag bench`` subparsers."""
    for name, (text, add, _) in COMMANDS.items():
        p = bench_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add(p)


def run_command(args, say=print) -> int:
    """Dispatch on ``args.bench_command`` (one of :data:`COMMANDS`); ``say`` receives the
    command's report lines (the CLI's standard output by default)."""
    return COMMANDS[args.bench_command][2](args, say)
