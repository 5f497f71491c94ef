"""Which preset fits which model: one table and one resolver that every caller uses.

A preset is a named :class:`gooddrag.methods.config.DragConfig` (``config.PRESETS``). It is made for a
**method** (``config.METHODS``) on a **family** of models:

- ``sd``: Stable Diffusion 1.x/2.x at 512 px (the authors' settings);
- ``sdxl`` / ``sdxl-768``: SDXL's layout at 1024 px / 768 px (docs/sdxl.md);
- ``sd3`` / ``flux``: SD3/SD3.5 and FLUX.1 transformers at 1024 px (docs/method.md, "Flow-matching backbones");
- ``shapes``: the shipped shapes-64 model (64 px; docs/benchmarks.md);
- ``shapes-dit``: the shipped shapes-dit-64 transformer (64 px).

The family of a model is read once: ``shapes`` when :func:`gooddrag.models.names.info` knows the
name as a shapes model, else from the backbone kind its configs say (:mod:`gooddrag.models.backbone`),
never from its name. Names are looked up in :data:`PRESET_NAMES`, never assembled.
"""

from __future__ import annotations

from ..errors import GoodDragError
from ..models.backbone import FLUX, SD, SD3, SDXL
from ..models.names import info
from .config import METHODS, PRESETS

FAMILIES = ("sd", "sdxl", "sdxl-768", "sd3", "flux", "shapes", "shapes-dit")
PRESET_NAMES: dict[tuple[str, str], str] = {
    ("gooddrag", "sd"): "gooddrag",
    ("dragdiffusion", "sd"): "dragdiffusion",
    ("gooddrag-plus", "sd"): "gooddrag-plus",
    ("gooddrag", "sdxl"): "gooddrag-sdxl",
    ("dragdiffusion", "sdxl"): "dragdiffusion-sdxl",
    ("gooddrag-plus", "sdxl"): "gooddrag-plus-sdxl",
    ("gooddrag", "sdxl-768"): "gooddrag-sdxl-768",
    ("dragdiffusion", "sdxl-768"): "dragdiffusion-sdxl-768",
    ("gooddrag-plus", "sdxl-768"): "gooddrag-plus-sdxl-768",
    ("gooddrag", "shapes"): "shapes-gooddrag",
    ("dragdiffusion", "shapes"): "shapes-dragdiffusion",
    ("gooddrag-plus", "shapes"): "shapes-gooddrag-plus",
    ("freedrag", "sd"): "freedrag",
    ("freedrag", "sdxl"): "freedrag-sdxl",
    ("freedrag", "sdxl-768"): "freedrag-sdxl-768",
    ("freedrag", "shapes"): "shapes-freedrag",
    ("fastdrag", "sd"): "fastdrag",
    ("fastdrag", "shapes"): "shapes-fastdrag",
    ("dragnoise", "sd"): "dragnoise",
    ("dragnoise", "sdxl"): "dragnoise-sdxl",
    ("dragnoise", "sdxl-768"): "dragnoise-sdxl-768",
    ("dragnoise", "shapes"): "shapes-dragnoise",
    **{(method, family): f"{method}-{family}" for family in ("sd3", "flux")
       for method in ("gooddrag", "dragdiffusion", "gooddrag-plus")},
    **{(method, "shapes-dit"): f"shapes-dit-{method}" for method in ("gooddrag", "dragdiffusion", "gooddrag-plus")},
}
"""(method, family) -> preset name: every preset of ``config.PRESETS`` once (a test checks it)."""
FAMILY_OF_PRESET = {name: family for (_, family), name in PRESET_NAMES.items()}

METHOD_LABELS = {
    "gooddrag": "GoodDrag",
    "gooddrag-plus": "GoodDrag+ (ours: image warp, sub-pixel tracking)",
    "dragdiffusion": "DragDiffusion",
    "freedrag": "FreeDrag",
    "fastdrag": "FastDrag (one latent warp)",
    "dragnoise": "DragNoise",
}
"""What the web UI and messages call each method."""
FAMILY_LABELS = {
    "sd": "Stable Diffusion settings (512 px)",
    "sdxl": "SDXL settings (1024 px)",
    "sdxl-768": "SDXL settings (768 px)",
    "sd3": "SD3/SD3.5 settings (1024 px)",
    "flux": "FLUX.1 settings (1024 px)",
    "shapes": "shapes-64 settings (64 px)",
    "shapes-dit": "shapes-dit-64 settings (64 px)",
}


def preset_name(method: str, family: str) -> str:
    """The preset of ``method`` made for ``family``."""
    try:
        return PRESET_NAMES[method, family]
    except KeyError:
        raise GoodDragError(
            f"no preset of method {method!r} for {family!r} models; methods: {', '.join(METHODS)}; "
            f"families: {', '.join(FAMILIES)}"
        ) from None


def family_for(model: str | None, kind: str = SD, light: bool = False) -> str:
    """The family of a model: ``shapes`` for a known shapes model (by name or shipped folder),
    else from its backbone ``kind`` (``backbone.SD``, ``SDXL``, ``SD3``, ``FLUX``, read from its configs);
    ``light``: SDXL's 768 px presets."""
    known = info(model)
    if known is not None and known.presets:
        return known.presets
    if kind == SDXL:
        return "sdxl-768" if light else "sdxl"
    if kind == SD:
        return "sd"
    if kind in (SD3, FLUX):
        return kind
    raise GoodDragError(f"unknown backbone kind {kind!r}")


def for_model(method: str, model: str | None = None, kind: str = SD, light: bool = False) -> str:
    """The preset of ``method`` that fits ``model`` (see :func:`family_for`)."""
    return preset_name(method, family_for(model, kind, light))


def family_of_preset(preset: str) -> str:
    """The family a preset is made for."""
    if preset not in FAMILY_OF_PRESET:
        raise GoodDragError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return FAMILY_OF_PRESET[preset]


def label(preset: str) -> str:
    """``"GoodDrag+ (ours: ...), shapes-64 settings (64 px)"``: the words for a preset, never its name."""
    return f"{METHOD_LABELS[PRESETS[preset].method]}, {FAMILY_LABELS[family_of_preset(preset)]}"


def misfit(preset: str, family: str) -> str | None:
    """None when ``preset`` is made for ``family``; else one sentence on what running it costs."""
    made_for = family_of_preset(preset)
    if made_for == family:
        return None
    config = PRESETS[preset]
    return (f"preset {label(preset)} is made for {FAMILY_LABELS[made_for].split(' settings')[0]} models, not this "
            f"{FAMILY_LABELS[family].split(' settings')[0]} model: it works at {config.resolution} px with "
            f"{config.lora_steps} LoRA steps x {config.lora_batch_size} and {config.inversion_steps} DDIM steps, "
            f"where {label(preset_name(config.method, family))} fits (slower, and outside what the model was "
            "trained on)")
