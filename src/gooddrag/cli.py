"""``gooddrag`` command line: ``edit`` (drag an image) and ``lora`` (train and cache a LoRA).

Every user error ends with one line on stderr and a non-zero exit (1 for a
bad input or environment, 2 for bad usage or inputs that cannot work, such as
a handle outside the mask, 130 when interrupted).

torch, PIL and the modules that load models are imported inside the commands that use
them (each marked ``# heavy``), so that ``gooddrag --help`` and the argument checks stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .benchmark import register_commands, run_command
from .methods.config import METHODS
from .shapes.scenes import ALL_KINDS, make_benchmark_cases
from .errors import GoodDragError
from .models.names import SHAPES_DIT_MODEL, SHAPES_MODEL, size_warning
from .io.options import (
    add_input_options,
    add_method_options,
    add_model_options,
    config_for_pipeline,
    config_from_args,
    load_pipeline,
)
from .io.outputs import file_sha256, prepare_out_dir, run_record, write_result_folder
from .ui import add_arguments as add_ui_arguments
from .ui import run as run_ui

NO_PROGRESS_HELP = "hide the progress bars (default: shown)"
OVERWRITE_HELP = "replace an existing output folder (default: refuse)"
DEVICE_HELP = "cpu, cuda, mps or auto (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The ``gooddrag`` parser: ``edit``, ``lora``, ``demo``, ``bench`` and ``ui``, in this order."""
    parser = argparse.ArgumentParser(
        prog="gooddrag",
        description="Drag editing of images with diffusion models (GoodDrag, ICLR 2025; DragDiffusion baseline).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does (default: warnings only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_edit_parser(sub)
    _add_lora_parser(sub)
    _add_demo_parser(sub)
    _add_bench_parser(sub)
    _add_ui_parser(sub)
    return parser


def _add_edit_parser(sub: argparse._SubParsersAction) -> None:
    edit = sub.add_parser("edit", help="drag the content under handle points to target points",
                          description="Drag the content under each handle point to its target point.")
    add_input_options(edit)
    out = edit.add_argument_group("output")
    out.add_argument("--out", default=None,
                     help="output folder (default: results/<sample or image name>-<method>)")
    out.add_argument("--trajectory", action="store_true", help="also write trajectory.gif, one frame per drag timestep (default: off)")
    out.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    out.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_model_options(edit)
    add_method_options(edit)


def _add_lora_parser(sub: argparse._SubParsersAction) -> None:
    lora_p = sub.add_parser("lora", help="train and cache the LoRA of an image ahead of an edit",
                            description="Train the per-image LoRA and store it in the cache that `gooddrag edit` reads.")
    add_input_options(lora_p, points=False)
    lora_p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_model_options(lora_p)
    add_method_options(lora_p)


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="offline demo on a shipped shapes model, scored against the exact answer",
                          description="Make two synthetic scenes with a known answer (an object moved, an object "
                                      "turned), drag them with GoodDrag and GoodDrag+ on the shipped shapes-64 "
                                      "(or shapes-dit-64) model (no network, CPU is enough), write one comparison picture and the "
                                      "result folders, and print each result's scores against the exact answer.")
    demo.add_argument("--model", default=SHAPES_MODEL, choices=[SHAPES_MODEL, SHAPES_DIT_MODEL],
                      help=f"shipped model: {SHAPES_MODEL} (a UNet) or {SHAPES_DIT_MODEL} (an SD3-layout "
                           "flow-matching transformer) (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="scene and LoRA seed (default: %(default)s)")
    demo.add_argument("--kind", default="single", choices=["single", "multi_point", "multi_object"],
                      help="kind of the moved scene (default: %(default)s)")
    demo.add_argument("--method", default=None, choices=list(METHODS),
                      help="run this method only (default: gooddrag and gooddrag-plus side by side)")
    demo.add_argument("--out", default="results/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    demo.add_argument("--device", default="cpu", help=DEVICE_HELP)
    demo.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """``gooddrag bench``: ``shapes`` here, ``run``, ``eval``, ``compare`` and ``estimate`` from :mod:`gooddrag.benchmark`."""
    bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks of drag methods.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    _add_bench_shapes_parser(bench_sub)
    register_commands(bench_sub)


def _add_bench_shapes_parser(bench_sub: argparse._SubParsersAction) -> None:
    shapes = bench_sub.add_parser(
        "shapes", help="exact-ground-truth benchmark on synthetic scenes with a shipped shapes model",
        description="Drag cases drawn by seed on synthetic scenes whose right answer is known exactly; "
                    "scores each method by where the moved object really ended up.")
    shapes.add_argument("--cases", type=int, default=50,
                        help="number of translation cases, drawn as before whatever --kinds says "
                             "(default: %(default)s)")
    shapes.add_argument("--kinds", default=",".join(ALL_KINDS),
                        help="comma-separated case kinds: translations single, multi_point, multi_object; "
                             "deformations rotate, scale, stretch (default: all)")
    shapes.add_argument("--per-kind", type=int, default=10,
                        help="cases of each deformation kind (default: %(default)s)")
    shapes.add_argument("--seed", type=int, default=0, help="seed the cases are drawn from (default: %(default)s)")
    shapes.add_argument("--model", default=SHAPES_MODEL, choices=[SHAPES_MODEL, SHAPES_DIT_MODEL],
                        help=f"shipped model: {SHAPES_MODEL} (a UNet) or {SHAPES_DIT_MODEL} (a flow-matching "
                             "transformer; gooddrag, gooddrag-plus and dragdiffusion only) (default: %(default)s)")
    shapes.add_argument("--method", default=",".join(("gooddrag", "gooddrag-plus", "dragdiffusion", "identity",
                                                      "autoencoder")),
                        help="comma-separated methods: any method with a preset for the --model (gooddrag, "
                             "gooddrag-plus, and the baselines dragdiffusion, freedrag, ...), and the reference "
                             "rows identity (the input) and autoencoder (the answer through the model's VAE) "
                             "(default: %(default)s)")
    shapes.add_argument("--out", default="results/bench-shapes", help="output folder (default: %(default)s)")
    shapes.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    shapes.add_argument("--device", default="cpu", help=DEVICE_HELP)
    shapes.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")


def _add_ui_parser(sub: argparse._SubParsersAction) -> None:
    ui_p = sub.add_parser("ui", help="web UI: upload an image, paint a mask, click points, run (Gradio, offline)",
                          description="Start the gooddrag web app on http://127.0.0.1:7860 "
                                      "(shipped shapes-64 model by default).")
    add_ui_arguments(ui_p)


def _load_inputs(args, need_points: bool = True):
    from .io.samples import (  # heavy: torch (through core.geometry)
        Sample, check_mask_covers_points, check_points, fit_mask, load_image, load_mask, load_sample, parse_points,
    )

    if args.sample and args.image:
        raise GoodDragError("give either a sample folder or --image, not both")
    if args.sample:
        sample = load_sample(args.sample)
        if args.prompt is not None:
            sample.prompt = args.prompt
    elif args.image:
        image = load_image(args.image)
        handles = targets = None
        files = {"image": Path(args.image)}
        if need_points:
            if not args.points:
                raise GoodDragError("--points is required with --image, e.g. --points '120,80>160,80'")
            handles, targets = parse_points(args.points)
        mask = None
        if need_points and args.mask:
            mask = load_mask(args.mask)
            files["mask"] = Path(args.mask)
        sample = Sample(image, handles, targets, mask, args.prompt or "", Path(args.image).stem, "flags", files)
    else:
        raise GoodDragError("no input: give a sample folder or --image (see gooddrag edit --help)")
    if need_points:
        size = (sample.image.height, sample.image.width)
        check_points(sample.handle_points, sample.target_points, size)
        if sample.mask is not None:
            sample.mask = fit_mask(sample.mask, size)
            check_mask_covers_points(sample.mask, sample.handle_points, sample.target_points)  # before any work
    return sample


def cmd_edit(args) -> int:
    import torch  # heavy: keeps gooddrag --help fast

    from .methods.registry import check_mask_given

    config = config_from_args(args)
    sample = _load_inputs(args)
    check_mask_given(config.method, sample.mask)  # before the model loads
    out = Path(args.out) if args.out else Path("results") / f"{sample.name}-{config.method}"
    prepare_out_dir(out, args.overwrite)  # fail before the expensive part
    misfit = size_warning(args.model, sample.image.width, sample.image.height)
    if misfit:
        print(f"warning: {misfit}", file=sys.stderr)
    pipe = load_pipeline(args)
    config = config_for_pipeline(args, config, pipe)
    generator = torch.Generator().manual_seed(args.seed)
    result = pipe(
        sample.image, sample.handle_points, sample.target_points, mask=sample.mask, prompt=sample.prompt,
        config=config, generator=generator, lora_path=args.lora, lora_cache_dir=args.lora_cache_dir,
        return_trajectory=args.trajectory, progress=not args.no_progress,
    )
    record = run_record(
        result=result, config=config, seed=args.seed,
        inputs={
            "layout": sample.layout,
            "sample": str(Path(args.sample).resolve()) if args.sample else None,
            "prompt": sample.prompt,
            "files": {role: {"path": str(p.resolve()), "sha256": file_sha256(p)} for role, p in sample.files.items()},
            "image_size": [sample.image.width, sample.image.height],
        },
        model={
            "model": args.model, "kind": pipe.source.kind if pipe.source else None,
            "model_config": args.model_config, "vae": args.vae, "device": str(pipe.device), "dtype": args.dtype,
            "low_memory": args.low_memory,
            "prediction_type": pipe.prediction_type,
        },
        argv=["gooddrag", *args.argv],
    )
    write_result_folder(out, input_image=sample.image, result=result, mask=sample.mask,
                        run_record=record, overwrite=args.overwrite)
    err = ", ".join(
        f"{d:.1f}px" for d in ((result.handle_points - result.target_points) ** 2).sum(axis=1) ** 0.5
    )
    print(f"wrote {out}  (handle-to-target distance after the drag: {err}; "
          f"{result.timings['total']:.1f} s, stop: {result.stats.stop_reason})")
    return 0


def cmd_lora(args) -> int:
    import torch  # heavy: keeps gooddrag --help fast

    config = config_from_args(args)
    if config.lora_steps == 0:
        raise GoodDragError("--lora-steps 0 trains nothing")
    sample = _load_inputs(args, need_points=False)
    pipe = load_pipeline(args)
    config = config_for_pipeline(args, config, pipe)
    from .models import lora as lora_mod  # heavy: peft; only after the argument checks

    try:  # the LoRA depends on the image, the prompt and the settings only
        record = pipe.prepare_lora(
            sample.image, sample.prompt, config, cache_dir=args.lora_cache_dir,
            generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress,
        )
    finally:
        lora_mod.remove_lora(pipe.unet)
    state = "already cached" if record["source"] == "cache" else "trained and cached"
    print(f"LoRA {state}: {record['path']}")
    return 0


def cmd_demo(args) -> int:
    from PIL import Image  # heavy: keeps gooddrag --help fast

    from .shapes.benchmark import (  # heavy: torch
        DEMO_METHODS, demo_cases, demo_line, demo_picture, load_shapes_pipeline, run_demo,
    )

    out = prepare_out_dir(args.out, args.overwrite)
    methods = [args.method] if args.method else list(DEMO_METHODS)
    pipe = load_shapes_pipeline(device=args.device, model=args.model)
    runs = run_demo(pipe, demo_cases(args.seed, args.kind), methods, seed=args.seed, progress=not args.no_progress)
    for run in runs:  # one result folder per scene and method, as gooddrag edit writes it
        folder = out / f"{run.scene}-{run.method}"
        record = run_record(
            result=run.result, config=run.result.config, seed=args.seed,
            inputs={"layout": "shapes", "case_seed": run.case.seed, "kind": run.case.kind, "size": run.case.size},
            model={"model": args.model, "kind": pipe.source.kind if pipe.source else None,
                   "device": str(pipe.device), "dtype": "fp32"},
            argv=["gooddrag", *args.argv],
        ) | {"ground_truth_scores": run.scores}
        write_result_folder(folder, input_image=Image.fromarray(run.case.image), result=run.result,
                            mask=run.case.mask, run_record=record, overwrite=True)
        Image.fromarray(run.case.ground_truth).save(folder / "ground_truth.png")
    demo_picture(runs, out / "comparison.png")
    scores = {f"{r.scene}-{r.method}": r.scores | {"seconds": r.seconds, "case_seed": r.case.seed,
                                                   "kind": r.case.kind} for r in runs}
    (out / "scores.json").write_text(json.dumps(scores, indent=2, default=str) + "\n")
    print(f"wrote {out}: comparison.png (rows: a move and a turn; input | {' | '.join(methods)} | exact answer), "
          "scores.json and one result folder per row and method")
    for run in runs:
        print(demo_line(run))
    return 0


def cmd_bench(args) -> int:
    if args.bench_command in ("run", "eval", "compare", "estimate"):
        return run_command(args, say=print)
    if args.bench_command != "shapes":
        raise GoodDragError("choose a benchmark: gooddrag bench shapes | run | eval | compare | estimate")
    from .shapes.benchmark import (  # heavy: torch
        load_shapes_pipeline, methods_for, run_benchmark, summarize_by_kind, write_report,
    )

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    offered = methods_for("shapes-dit" if args.model == SHAPES_DIT_MODEL else "shapes")
    bad = [m for m in methods if m not in offered]
    if bad or not methods:
        raise GoodDragError(f"unknown method(s) {', '.join(bad) or '(none)'} for {args.model}; choose from "
                            f"{', '.join(offered)}")
    if args.cases < 1:
        raise GoodDragError(f"--cases must be at least 1, got {args.cases}")
    if args.per_kind < 1:
        raise GoodDragError(f"--per-kind must be at least 1, got {args.per_kind}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise GoodDragError(f"unknown kind(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_KINDS)}")
    cases = make_benchmark_cases(args.cases, args.seed, kinds, per_kind=args.per_kind)
    if not cases:
        raise GoodDragError(f"no case of kind(s) {', '.join(kinds)} among the {args.cases} translation cases")
    out = prepare_out_dir(args.out, args.overwrite)
    pipe = load_shapes_pipeline(device=args.device, model=args.model)
    rows, images = run_benchmark(pipe, cases, methods, seed=args.seed, progress=not args.no_progress)
    summary = summarize_by_kind(rows)
    write_report(out, rows, summary, cases, images, methods, seed=args.seed, model=args.model)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.csv, summary.json, figure.png")
    return 0


def cmd_ui(args) -> int:
    return run_ui(args, say=lambda line: print(line, flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    if not args.verbose:
        for noisy in ("diffusers", "transformers", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        try:  # heavy: diffusers, transformers; --help exits before this
            import diffusers.utils.logging as dlog
            import transformers.utils.logging as tlog

            dlog.set_verbosity_error()
            dlog.disable_progress_bar()
            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        except ImportError:  # pragma: no cover - both are dependencies
            pass
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"edit": cmd_edit, "lora": cmd_lora, "demo": cmd_demo, "bench": cmd_bench, "ui": cmd_ui}[args.command](args)
    except GoodDragError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # out of GPU memory has no common base class worth importing torch for here
        if type(err).__name__ == "OutOfMemoryError":
            print(
                "error: out of GPU memory; lower it with --dtype fp16, --low-memory, --resolution 384, "
                "--lora-batch-size 1, or run the LoRA first with `gooddrag lora`", file=sys.stderr,
            )
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
