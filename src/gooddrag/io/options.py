"""Options shared by the commands: the settings table, option groups, and what they build.

The command line (``gooddrag edit``, ``lora``) and ``gooddrag bench run`` take the
same model and method options; the web UI shows the same settings. They all read
them from here, so this module sits below every command: it imports the model
plumbing and the pipeline, and no application or the command line.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..core.warp import FILLS, IMAGE_FILLS, WARP_FIELDS
from ..errors import GoodDragError
from ..methods import presets
from ..methods.config import METHODS, PRESETS, DragConfig, get_preset
from ..models import names


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0) for the on/off settings."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


parse_bool.__name__ = "true/false"  # argparse names the type in its error message


def choice_parser(choices: tuple[str, ...], name: str):
    """An argparse type that takes one of ``choices`` (the web UI shows ``.choices`` as a list)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    parse.__name__ = name  # argparse names the type in its error message
    parse.choices = choices
    return parse


parse_fill = choice_parser(FILLS, "fill")  # gooddrag.core.warp.FILLS
parse_field = choice_parser(WARP_FIELDS, "field")  # gooddrag.core.warp.WARP_FIELDS
parse_image_fill = choice_parser(IMAGE_FILLS, "image fill")  # gooddrag.core.warp.IMAGE_FILLS

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
    ("--track-at-timestep-start", "track_at_timestep_start", parse_bool,
     "true/false: track once on each drag timestep's first forward pass"),
    ("--track-on-fresh-features", "track_on_fresh_features", parse_bool,
     "true/false: a round's closing tracking uses the latent after its last step (ours) instead of "
     "the round's last forward pass (the authors')"),
    ("--mutual-attention-while-dragging", "mutual_attention_while_dragging", parse_bool,
     "true/false: mutual self-attention also in the drag timesteps' denoising steps"),
    ("--stop-distance", "stop_distance", float, "a handle closer than this to its target is done (supervision cells)"),
    ("--image-warp", "image_warp", parse_bool,
     "true/false: GoodDrag+ (ours): warp the masked region of the image along the drag, invert it, drag from there"),
    ("--latent-warp", "latent_warp", parse_bool,
     "true/false: GoodDrag+ (ours): move the masked region of the latent along the drag before it"),
    ("--warp-field", "warp_field", parse_field,
     "affine or translations: each mask region's fitted map, or the pairs' displacements blended"),
    ("--image-warp-fill", "image_warp_fill", parse_image_fill,
     "behind or around: what the image warp uncovers gets (the image behind it, or pixels grown in)"),
    ("--warp-fill", "warp_fill", parse_fill, "keep, neighbours or noise: what the latent warp leaves behind gets"),
    ("--subpixel-tracking", "subpixel_tracking", parse_bool,
     "true/false: GoodDrag+ (ours): track the handles to a fraction of a cell"),
]


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=names.DEFAULT_HUB_MODEL,
                   help="hub id, local diffusers folder, single-file .safetensors/.ckpt, or shapes-64 (the "
                        "shipped offline model) (default: %(default)s)")
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


def add_input_options(p: argparse.ArgumentParser, points: bool = True) -> None:
    p.add_argument("sample", nargs="?", default=None,
                   help="sample folder in Drag100 (original.jpg, mask.png, points.json) or "
                        "DragBench (original_image.png, meta_data.pkl) layout (default: none; use --image)")
    g = p.add_argument_group("inputs (instead of a sample folder)")
    g.add_argument("--image", default=None, help="input image file (default: none)")
    if points:
        g.add_argument("--mask", default=None, help="mask image, white = may change (default: everything may change)")
        g.add_argument("--points", default=None, help="'x,y>x,y; x,y>x,y': handle > target pairs in image pixels (default: none; required with --image)")
    g.add_argument("--prompt", default=None, help="text prompt (default: the sample's, else empty)")


def add_method_options(p: argparse.ArgumentParser, lora_file: bool = True) -> None:
    g = p.add_argument_group("method settings (default: the --method preset's value)")
    g.add_argument("--method", default=None, choices=list(METHODS),
                   help="gooddrag (AIDD + information-preserving loss), the baselines dragdiffusion, freedrag "
                        "(templates and a line search), dragnoise (the UNet bottleneck dragged) and fastdrag "
                        "(one latent warp; needs a mask), or gooddrag-plus (ours: GoodDrag from the warped "
                        "image, sub-pixel tracking) (default: the preset's, else gooddrag)")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="named settings; shapes-* are for the shipped shapes-64 model, shapes-dit-* for "
                        "shapes-dit-64, *-sdxl, *-sd3 and *-flux for SDXL, SD3/SD3.5 and FLUX.1 models (default: "
                        "the method's name; shapes-<method> with --model shapes-64; <method>-sdxl/-sd3/-flux for "
                        "a model whose configs say so)")
    for flag, name, typ, text in METHOD_SETTINGS:
        values = ", ".join(f"{m} {getattr(PRESETS[m], name)}" for m in METHODS
                           if name not in getattr(PRESETS[m], "UNUSED", ()))
        g.add_argument(flag, dest=name, type=typ, default=None, help=f"{text} (default: {values})")
    g.add_argument("--set", dest="own_settings", action="append", default=[], metavar="NAME=VALUE",
                   help="any setting of the method's config by its name, e.g. a baseline's own: --set "
                        "l_expected=0.5 (freedrag), --set fastdrag_fill=random (fastdrag); repeatable "
                        "(names and sources: docs/method.md) (default: the preset's)")
    g.add_argument("--seed", type=int, default=PRESETS["gooddrag"].seed,
                   help="seed of the LoRA's noise and timesteps (default: %(default)s)")
    if lora_file:
        g.add_argument("--lora", default=None,
                       help="use this LoRA (folder or .safetensors) (default: the cached one, else one trained now)")
    g.add_argument("--lora-cache-dir", default=None,
                   help="where trained LoRAs are cached (default: $GOODDRAG_CACHE/lora or ~/.cache/gooddrag/lora)")


def default_preset(args) -> str:
    """The preset for ``--method`` (default gooddrag) that fits ``--model``: a named model's
    own (shapes-*), else the SDXL one when the model's configs (or a single file's tensor
    names) say SDXL, else the method's. Read from the model, never from its name; when the
    model cannot be read here, the method's preset (loading then says what is wrong)."""
    model, method = getattr(args, "model", None), args.method or "gooddrag"
    name = presets.for_model(method, model)
    if presets.family_of_preset(name) != "sd" or not model:
        return name
    from ..models.backbone import (
        detect_backbone,  # heavy (diffusers): not for gooddrag --help
    )
    from ..models.loading import classify_source

    try:
        kind = detect_backbone(classify_source(names.resolve(model)), getattr(args, "model_config", None))
    except (GoodDragError, OSError, ValueError):
        return name
    return presets.for_model(method, model, kind)


def own_settings(items: list[str], preset: str) -> dict:
    """``--set NAME=VALUE`` items as overrides of ``preset``'s config, each value read as the type of
    the preset's own value; a name the config does not have is refused."""
    base, out = PRESETS[preset], {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not hasattr(base, name) or name in ("method", "seed"):
            own = sorted(f.name for f in dataclasses.fields(base) if f.name not in ("method", "seed"))
            raise GoodDragError(f"--set {item!r}: give NAME=VALUE with a setting of {base.method}: {', '.join(own)}")
        kind = type(getattr(base, name))
        try:
            out[name] = parse_bool(text) if kind is bool else kind(text.strip())
        except (ValueError, argparse.ArgumentTypeError):
            raise GoodDragError(f"--set {name}: expected {kind.__name__}, got {text!r}") from None
    return out


def config_from_args(args) -> DragConfig:
    overrides = {name: getattr(args, name) for _, name, _, _ in METHOD_SETTINGS if getattr(args, name) is not None}
    overrides["seed"] = args.seed
    # No --preset: the method's preset that fits the model (shapes-* for the shipped shapes-64,
    # *-sdxl for a model whose configs say SDXL).
    preset = args.preset or default_preset(args)
    if args.method and PRESETS[preset].method != args.method:
        raise GoodDragError(f"--preset {preset} is a {PRESETS[preset].method} preset but --method is {args.method}")
    return get_preset(preset, **(overrides | own_settings(getattr(args, "own_settings", []), preset)))


def config_for_pipeline(args, config: DragConfig, pipe) -> DragConfig:
    """After loading: without ``--preset``, an SDXL, SD3 or FLUX model gets its method's preset for
    that kind (read from the loaded model, never from its name; a named shapes model keeps its own),
    with the same command-line overrides."""
    if args.preset or getattr(pipe, "kind", "sd") == "sd":  # gooddrag.models.backbone.SD
        return config
    preset = presets.for_model(config.method, getattr(args, "model", None), pipe.kind)
    overrides = {name: getattr(args, name) for _, name, _, _ in METHOD_SETTINGS if getattr(args, name) is not None}
    overrides |= own_settings(getattr(args, "own_settings", []), preset)
    return get_preset(preset, **overrides, seed=args.seed)


def load_pipeline(args):
    from ..methods.pipeline import (
        DragPipeline,  # heavy (diffusers): not for gooddrag --help
    )

    pipe = DragPipeline.from_pretrained(
        args.model, vae=args.vae, model_config=args.model_config, vae_config=args.vae_config,
        device=args.device, dtype=args.dtype,
    )
    if getattr(args, "low_memory", False):
        pipe.enable_low_memory()
    return pipe
