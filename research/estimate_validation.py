"""``gooddrag bench estimate`` against real runs on the CPU (docs/benchmarks.md, "Memory and compute").

For a model and a schedule it runs the edit for real (CPU, fp32, random weights, the early stops
off) and measures it two ways:

- **profiler**: torch.profiler's memory events, every allocation and free of the CPU allocator in
  time order, summed from the weights' bytes up: a measurement that shares nothing with the
  estimator's counters (it sees what kernels allocate inside, too);
- **live storages**: the estimator's own counters (:class:`gooddrag.benchmark.estimate_counters.Counters`)
  on the real tensors, with the operators and FLOPs;

and estimates it: the same architecture built from its configs on fake tensors, the short runs of
:mod:`gooddrag.benchmark.estimate_sim` extrapolated to the schedule, counted as on the CPU (one
memory, exact bytes). Models: ``tiny`` (:mod:`gooddrag.models.tiny`) and ``sd15`` (SD 1.5's
published configs, random weights; 256 px keeps a real run to minutes on 2 cores).

    python research/estimate_validation.py --model sd15 --resolution 256 --json sd15-256.json
    python research/estimate_validation.py --model tiny --schedule 70,38,7,10,3   # the full schedule
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from gooddrag import DragPipeline, get_preset  # noqa: E402
from gooddrag.benchmark import estimate_sim as E  # noqa: E402
from gooddrag.benchmark.estimate_counters import Counters, total  # noqa: E402
from gooddrag.benchmark.estimate_models import build_fake_pipeline, builtin_configs, fake_mode, folder_configs  # noqa: E402
from gooddrag.methods.base import DragHooks  # noqa: E402
from gooddrag.models.tiny import save_tiny_pipeline  # noqa: E402

TINY_SPATIAL = dict(r1=2, r2=4, beta=2.0, mutual_attention_start_layer=7)
"""The tiny model's spatial settings (research/speed.py)."""
SCHEDULES = {"tiny": E.Schedule(10, 12, 4, 5, 3), "sd15": E.Schedule(2, 3, 2, 2, 2)}
"""Default schedules (LoRA steps, inversion steps, drag timesteps, rounds, steps per round): longer
than every short run, short enough for a real run on 2 cores (tiny: seconds; sd15 at 256: minutes)."""


def pipelines(model: str, folder: Path) -> tuple[DragPipeline, DragPipeline]:
    """(real, fake) pipelines of ``model``, fp32 on the CPU, the same architecture."""
    configs = folder_configs(save_tiny_pipeline(folder)) if model == "tiny" else builtin_configs(model)
    with E.quiet_diffusers():
        torch.manual_seed(0)
        real = DragPipeline(build_fake_pipeline(configs, torch.float32, None), device="cpu")
        fake = DragPipeline(build_fake_pipeline(configs, torch.float32, fake_mode()), device="cpu")
    with torch.no_grad():  # as gooddrag.models.tiny does: a random UNet's trajectory stays tame
        real.unet.conv_out.weight.mul_(0.02)
    return real, fake


def profiled_run(pipe: DragPipeline, config) -> dict:
    """The real edit under the counters and torch.profiler; returns both measurements per phase."""
    counters = Counters(round_to=1)

    @contextlib.contextmanager
    def phase(name: str):
        with counters.phase(name), record_function(f"phase:{name}"):
            yield

    pipe.hooks = DragHooks(track=E.stand_in_track, host_read=E.stand_in_read, phase=phase)
    pipe.cache_lora = False
    image, handle, target, mask = E.make_inputs(config.resolution)
    gc.collect()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with counters:
            counters.track_existing(E.device_tensors(pipe))
            baseline = counters.live_bytes
            with record_function("phase:other"):
                pipe(image, [handle], [target], mask, config=config, progress=False)
    seconds = time.perf_counter() - start
    return {"live_storages": counters.finish(), "profiler": profiler_peaks(prof, baseline), "seconds": seconds}


def profiler_peaks(prof, baseline: int) -> dict[str, int]:
    """Per phase (the innermost ``phase:`` range around each event) and in all (``"edit"``): the
    most bytes live, from ``baseline`` (the weights) plus the memory events summed in time order."""
    events = list(prof.profiler.kineto_results.events())
    ranges = sorted(((e.start_ns(), e.start_ns() + e.duration_ns(), e.name()[6:]) for e in events
                     if e.name().startswith("phase:")), key=lambda r: r[0])
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live, peaks = baseline, {"edit": baseline}
    for t, nbytes in memory:
        live += nbytes
        inside = [r for r in ranges if r[0] <= t <= r[1]]
        name = max(inside, key=lambda r: r[0])[2] if inside else "other"
        peaks[name] = max(peaks.get(name, 0), live)
        peaks["edit"] = max(peaks["edit"], live)
    return peaks


def validate(model: str, resolution: int, schedule: E.Schedule, method: str = "gooddrag") -> dict:
    """The real run measured and the estimate, per phase and in all (module docstring)."""
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="gooddrag-validate-") as tmp:
        real, fake = pipelines(model, Path(tmp) / "model")
    spatial = TINY_SPATIAL if model == "tiny" else {}
    config = schedule.config(get_preset(method, resolution=resolution, **spatial))
    start = time.perf_counter()
    with E.quiet_diffusers():
        sim = E.simulate(fake, config, progress=False, round_to=1)
    estimate_seconds = time.perf_counter() - start
    measured = profiled_run(real, config)
    phases = {}
    for name in E.PHASES:
        est, live = sim["phases"][name], measured["live_storages"][name]
        phases[name] = {"estimate": est.to_dict(), "measured": live.to_dict() | {
            "profiler_peak_bytes": measured["profiler"].get(name)}}
    whole = total(sim["phases"])
    return {
        "model": model, "resolution": resolution, "method": method, "schedule": vars(schedule),
        "phases": phases,
        "peak": {"estimate": whole.peak_bytes, "live_storages": total(measured["live_storages"]).peak_bytes,
                 "profiler": measured["profiler"]["edit"]},
        "flops": {"estimate": whole.flops, "measured": total(measured["live_storages"]).flops},
        "ops": {"estimate": whole.ops, "measured": total(measured["live_storages"]).ops},
        "seconds": {"estimate": estimate_seconds, "real_run": measured["seconds"]},
    }


def validate_sd15(resolution: int = 256) -> dict:
    """SD 1.5's architecture at ``resolution`` with the default short schedule (the slow test's)."""
    return validate("sd15", resolution, SCHEDULES["sd15"])


def print_table(result: dict) -> None:
    """One line a phase: estimate against the two measurements (this script's report)."""
    print(f"{result['model']} at {result['resolution']} px, schedule {result['schedule']}")
    print(f"{'phase':<10} {'peak est MB':>12} {'live MB':>9} {'profiler MB':>12} {'GFLOP est':>10} {'GFLOP real':>11}"
          f" {'ops est':>9} {'ops real':>9}")
    for name, row in result["phases"].items():
        e, m = row["estimate"], row["measured"]
        prof = m["profiler_peak_bytes"]
        print(f"{name:<10} {e['peak_bytes'] / 1e6:>12.1f} {m['peak_bytes'] / 1e6:>9.1f} "
              f"{(prof or 0) / 1e6:>12.1f} {e['flops'] / 1e9:>10.1f} {m['flops'] / 1e9:>11.1f} "
              f"{e['ops']:>9} {m['ops']:>9}")
    p = result["peak"]
    print(f"edit peak: estimate {p['estimate'] / 1e6:.1f} MB, live storages {p['live_storages'] / 1e6:.1f} MB "
          f"({p['estimate'] / p['live_storages'] - 1:+.2%}), profiler {p['profiler'] / 1e6:.1f} MB "
          f"({p['estimate'] / p['profiler'] - 1:+.2%}); seconds {result['seconds']}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--resolution", type=int, default=None, help="working side (default: tiny 128, sd15 256)")
    ap.add_argument("--method", default="gooddrag", choices=["gooddrag", "dragdiffusion", "gooddrag-plus"])
    ap.add_argument("--schedule", default=None, help="L,I,T,R,S (default: the model's in SCHEDULES)")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    schedule = (E.Schedule(*map(int, args.schedule.split(","))) if args.schedule else SCHEDULES[args.model])
    result = validate(args.model, args.resolution or (128 if args.model == "tiny" else 256), schedule, args.method)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
