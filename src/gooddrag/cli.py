"""``gooddrag`` command line: ``edit`` (drag an image) and ``lora`` (train and cache a LoRA).

Every user error ends with one line on stderr and a non-zero exit (1 for a
bad input or environment, 2 for bad usage, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import METHODS, PRESETS, DragConfig, get_preset
from .errors import GoodDragError

# (flag, DragConfig field, type, one-line help). Defaults are the chosen
# method's preset; --help prints both presets' values.
METHOD_SETTINGS = [
    ("--resolution", "resolution", int, "working long side in pixels (sides rounded to what the UNet needs)"),
    ("--lora-steps", "lora_steps", int, "LoRA steps on the input image; 0 = no LoRA"),
    ("--lora-rank", "lora_rank", int, "LoRA rank"),
    ("--lora-lr", "lora_lr", float, "LoRA learning rate"),
    ("--lora-batch-size", "lora_batch_size", int, "LoRA batch size"),
    ("--num-inference-steps", "num_inference_steps", int, "DDIM steps of the full schedule"),
    ("--inversion-strength", "inversion_strength", float, "fraction of the schedule inverted"),
    ("--drag-end-step", "drag_end_step", int, "denoising timesteps with drag work (AIDD)"),
    ("--track-per-step", "track_per_step", int, "point-tracking rounds per drag timestep"),
    ("--max-drag-per-track", "max_drag_per_track", int, "optimiser steps between two trackings"),
    ("--max-track-no-change", "max_track_no_change", int, "stop after this many rounds without movement; 0 = off"),
    ("--drag-loss-threshold", "drag_loss_threshold", float, "end a round early below this drag loss; 0 = off"),
    ("--lr", "lr", float, "Adam learning rate on the latent"),
    ("--r1", "r1", int, "motion-supervision patch radius (supervision cells)"),
    ("--r2", "r2", int, "point-tracking search radius (supervision cells)"),
    ("--beta", "beta", float, "step length towards the target (supervision cells)"),
    ("--lambda", "lam", float, "weight of the background (outside-mask) term"),
    ("--feature-block", "feature_block", int, "decoder block for features: 0 = mid, 1.. = up blocks"),
    ("--mutual-attention-start-layer", "mutual_attention_start_layer", int,
     "first self-attention layer (counted down, mid, up) with mutual self-attention"),
]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from .loading import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id, local diffusers folder, or single-file .safetensors/.ckpt (default: %(default)s)")
    g.add_argument("--model-config", default=None,
                   help="for a single-file --model: diffusers folder or hub id with its configs (default: inferred)")
    g.add_argument("--vae", default=None,
                   help="separate VAE: hub id, folder or single file, e.g. stabilityai/sd-vae-ft-mse (default: the model's)")
    g.add_argument("--vae-config", default=None, help="for a single-file --vae: its config folder (default: inferred)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="model weights; fp16 is the usual choice on a GPU (default: %(default)s)")
    g.add_argument("--low-memory", action="store_true",
                   help="for 8 GB GPUs: gradient checkpointing, VAE tiling and slicing; slower, same result "
                        "up to rounding (default: off)")


def _add_input_options(p: argparse.ArgumentParser, points: bool = True) -> None:
    p.add_argument("sample", nargs="?", default=None,
                   help="sample folder in Drag100 (original.jpg, mask.png, points.json) or "
                        "DragBench (original_image.png, meta_data.pkl) layout (default: none; use --image)")
    g = p.add_argument_group("inputs (instead of a sample folder)")
    g.add_argument("--image", default=None, help="input image file (default: none)")
    if points:
        g.add_argument("--mask", default=None, help="mask image, white = may change (default: everything may change)")
        g.add_argument("--points", default=None, help="'x,y>x,y; x,y>x,y': handle > target pairs in image pixels (default: none; required with --image)")
    g.add_argument("--prompt", default=None, help="text prompt (default: the sample's, else empty)")


def _add_method_options(p: argparse.ArgumentParser, lora_file: bool = True) -> None:
    g = p.add_argument_group("method settings (default: the --method preset's value)")
    g.add_argument("--method", default=None, choices=list(METHODS),
                   help="gooddrag (AIDD + information-preserving loss) or the dragdiffusion baseline "
                        "(default: the preset's, else gooddrag)")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="named settings; shapes-* are for the shipped shapes-64 model (default: the method's name)")
    for flag, name, typ, text in METHOD_SETTINGS:
        values = ", ".join(f"{m} {getattr(PRESETS[m], name)}" for m in METHODS)
        g.add_argument(flag, dest=name, type=typ, default=None, help=f"{text} (default: {values})")
    g.add_argument("--seed", type=int, default=PRESETS["gooddrag"].seed,
                   help="seed of the LoRA's noise and timesteps (default: %(default)s)")
    if lora_file:
        g.add_argument("--lora", default=None,
                       help="use this LoRA (folder or .safetensors) (default: the cached one, else one trained now)")
    g.add_argument("--lora-cache-dir", default=None,
                   help="where trained LoRAs are cached (default: $GOODDRAG_CACHE/lora or ~/.cache/gooddrag/lora)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gooddrag",
        description="Drag editing of images with diffusion models (GoodDrag, ICLR 2025; DragDiffusion baseline).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does (default: warnings only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    edit = sub.add_parser("edit", help="drag the content under handle points to target points",
                          description="Drag the content under each handle point to its target point.")
    _add_input_options(edit)
    out = edit.add_argument_group("output")
    out.add_argument("--out", default=None,
                     help="output folder (default: results/<sample or image name>-<method>)")
    out.add_argument("--trajectory", action="store_true", help="also write trajectory.gif, one frame per drag timestep (default: off)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output folder (default: refuse)")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bars (default: shown)")
    _add_model_options(edit)
    _add_method_options(edit)

    lora_p = sub.add_parser("lora", help="train and cache the LoRA of an image ahead of an edit",
                            description="Train the per-image LoRA and store it in the cache that `gooddrag edit` reads.")
    _add_input_options(lora_p, points=False)
    lora_p.add_argument("--no-progress", action="store_true", help="hide the progress bars (default: shown)")
    _add_model_options(lora_p)
    _add_method_options(lora_p)
    demo = sub.add_parser("demo", help="offline demo on the shipped shapes-64 model, scored against the exact answer",
                          description="Make a synthetic scene with a known answer, drag it with the shipped "
                                      "shapes-64 model (no network, CPU is enough), write the result folder and "
                                      "print the error against the ground truth.")
    demo.add_argument("--seed", type=int, default=0, help="scene and LoRA seed (default: %(default)s)")
    demo.add_argument("--kind", default="single", choices=["single", "multi_point", "multi_object"],
                      help="kind of drag case (default: %(default)s)")
    demo.add_argument("--method", default="gooddrag", choices=list(METHODS), help="method (default: %(default)s)")
    demo.add_argument("--out", default="results/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing output folder (default: refuse)")
    demo.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars (default: shown)")

    bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks of drag methods.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    shapes = bench_sub.add_parser(
        "shapes", help="exact-ground-truth benchmark on synthetic scenes with the shipped shapes-64 model",
        description="Drag cases drawn by seed on synthetic scenes whose right answer is known exactly; "
                    "scores each method by where the moved object really ended up.")
    shapes.add_argument("--cases", type=int, default=50, help="number of cases (default: %(default)s)")
    shapes.add_argument("--seed", type=int, default=0, help="seed the cases are drawn from (default: %(default)s)")
    shapes.add_argument("--method", default=",".join(("gooddrag", "dragdiffusion", "identity")),
                        help="comma-separated methods: gooddrag, dragdiffusion, identity (default: %(default)s)")
    shapes.add_argument("--out", default="results/bench-shapes", help="output folder (default: %(default)s)")
    shapes.add_argument("--overwrite", action="store_true", help="replace an existing output folder (default: refuse)")
    shapes.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    shapes.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    from .benchmark import register_commands

    register_commands(bench_sub)

    ui_p = sub.add_parser("ui", help="web UI: upload an image, paint a mask, click points, run (Gradio, offline)",
                          description="Start the gooddrag web app on http://127.0.0.1:7860 "
                                      "(shipped shapes-64 model by default).")
    from .ui import add_arguments as add_ui_arguments

    add_ui_arguments(ui_p)
    return parser


def _config_from_args(args) -> DragConfig:
    overrides = {name: getattr(args, name) for _, name, _, _ in METHOD_SETTINGS if getattr(args, name) is not None}
    overrides["seed"] = args.seed
    preset = args.preset or args.method or "gooddrag"
    if args.method and PRESETS[preset].method != args.method:
        raise GoodDragError(f"--preset {preset} is a {PRESETS[preset].method} preset but --method is {args.method}")
    return get_preset(preset, **overrides)


def _load_inputs(args, need_points: bool = True):
    from .samples import Sample, check_points, fit_mask, load_image, load_mask, load_sample, parse_points

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
    return sample


def _load_pipeline(args):
    from .pipeline import DragPipeline

    pipe = DragPipeline.from_pretrained(
        args.model, vae=args.vae, model_config=args.model_config, vae_config=args.vae_config,
        device=args.device, dtype=args.dtype,
    )
    if getattr(args, "low_memory", False):
        pipe.enable_low_memory()
    return pipe


def cmd_edit(args) -> int:
    import torch

    from .outputs import file_sha256, prepare_out_dir, run_record, write_result_folder

    config = _config_from_args(args)
    sample = _load_inputs(args)
    out = Path(args.out) if args.out else Path("results") / f"{sample.name}-{config.method}"
    prepare_out_dir(out, args.overwrite)  # fail before the expensive part
    pipe = _load_pipeline(args)
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
            "prediction_type": pipe.scheduler.config.prediction_type,
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
    import torch

    config = _config_from_args(args)
    if config.lora_steps == 0:
        raise GoodDragError("--lora-steps 0 trains nothing")
    sample = _load_inputs(args, need_points=False)
    pipe = _load_pipeline(args)
    # Any valid pair works here: the LoRA depends on the image, the prompt and the settings only.
    w, h = sample.image.size
    inputs = pipe.check_inputs(sample.image, [[0, 0]], [[w - 1, h - 1]], None, config)
    from . import lora as lora_mod

    try:
        record = pipe.prepare_lora(
            inputs, sample.prompt, config, cache_dir=args.lora_cache_dir,
            generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress,
        )
    finally:
        lora_mod.remove_lora(pipe.unet)
    state = "already cached" if record["source"] == "cache" else "trained and cached"
    print(f"LoRA {state}: {record['path']}")
    return 0


def cmd_demo(args) -> int:
    import numpy as np
    from PIL import Image

    from .outputs import prepare_out_dir, run_record, write_result_folder
    from .shapes.bench import edit_case, load_shapes_pipeline, shipped_model_dir
    from .shapes.metrics import case_metrics, success_threshold
    from .shapes.scenes import make_case

    out = prepare_out_dir(args.out, args.overwrite)
    case = make_case(args.seed, size=64, kind=args.kind)
    pipe = load_shapes_pipeline(device=args.device)
    image, seconds, result = edit_case(pipe, case, args.method, seed=args.seed, return_trajectory=True,
                                       progress=not args.no_progress)
    scores = case_metrics(image, case)
    record = run_record(
        result=result, config=result.config, seed=args.seed,
        inputs={"layout": "shapes", "case_seed": args.seed, "kind": case.kind, "size": case.size},
        model={"model": str(shipped_model_dir()), "kind": "folder", "device": str(pipe.device), "dtype": "fp32"},
        argv=["gooddrag", *args.argv],
    ) | {"ground_truth_scores": scores}
    write_result_folder(out, input_image=Image.fromarray(case.image), result=result, mask=case.mask,
                        run_record=record, overwrite=args.overwrite)
    Image.fromarray(case.ground_truth).save(out / "ground_truth.png")
    scale = 4
    up = lambda a: Image.fromarray(a).resize((64 * scale, 64 * scale), Image.NEAREST)  # noqa: E731
    from .outputs import draw_points

    tiles = [draw_points(up(case.image), case.handle_points * scale, case.target_points * scale, case.mask.repeat(scale, 0).repeat(scale, 1)),
             draw_points(up(image), case.handle_points * scale, case.target_points * scale,
                         final_points=result.handle_points * scale),
             up(case.ground_truth)]
    strip = Image.new("RGB", (3 * 64 * scale + 16, 64 * scale), "white")
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (64 * scale + 8), 0))
    strip.save(out / "comparison.png")
    dist = float(np.linalg.norm(case.displacements, axis=1).mean())
    print(f"wrote {out} (input | result | ground truth: comparison.png)")
    print(f"{args.method}: object moved to {scores['position_error']:.2f} px from its true place "
          f"({scores['relative_error']:.0%} of the {dist:.1f} px drag; success = under "
          f"{success_threshold(case.size):g} px: {'yes' if scores['success'] else 'no'}); "
          f"PSNR vs ground truth in mask {scores['psnr_in_mask']:.1f} dB, vs input outside it "
          f"{scores['psnr_outside_mask']:.1f} dB; {seconds:.1f} s")
    return 0


def cmd_bench(args) -> int:
    if args.bench_command in ("run", "eval", "compare"):
        from .benchmark import run_command

        return run_command(args, say=print)
    if args.bench_command != "shapes":
        raise GoodDragError("choose a benchmark: gooddrag bench shapes | run | eval | compare")
    from .outputs import prepare_out_dir
    from .shapes.bench import BENCH_METHODS, load_shapes_pipeline, run_benchmark, write_report
    from .shapes.metrics import summarize
    from .shapes.scenes import make_cases

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in BENCH_METHODS]
    if bad or not methods:
        raise GoodDragError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(BENCH_METHODS)}")
    if args.cases < 1:
        raise GoodDragError(f"--cases must be at least 1, got {args.cases}")
    out = prepare_out_dir(args.out, args.overwrite)
    cases = make_cases(args.cases, args.seed)
    pipe = load_shapes_pipeline(device=args.device)
    rows, images = run_benchmark(pipe, cases, methods, seed=args.seed, progress=not args.no_progress)
    summary = summarize(rows)
    write_report(out, rows, summary, cases, images, methods, seed=args.seed)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.csv, summary.json, figure.png")
    return 0


def cmd_ui(args) -> int:
    from .ui import run

    return run(args, say=lambda line: print(line, flush=True))


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
        try:
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
        return 1
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
