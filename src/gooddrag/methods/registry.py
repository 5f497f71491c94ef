"""The drag methods by name: one entry each (``DragConfig.method`` names one).

Adding a method is one module with a ``run`` function over the model (:class:`~gooddrag.methods.base.DragRun`)
plus an entry here, and its presets in :mod:`gooddrag.methods.config` / :mod:`gooddrag.methods.presets`.
"""

from __future__ import annotations

from ..errors import GoodDragError, InputsCannotWorkError
from . import aidd, dragnoise, fastdrag, freedrag
from .base import DragMethod

ALL = ("sd", "sdxl", "sd3", "flux")
"""Every backbone kind (gooddrag.models.backbone.BACKBONES): AIDD and DragDiffusion need only the model's
output, features, mutual attention and a LoRA, which each denoiser adapter provides."""

METHODS: dict[str, DragMethod] = {
    "gooddrag": DragMethod("gooddrag", aidd.drag_and_denoise, backbones=ALL),
    "dragdiffusion": DragMethod("dragdiffusion", aidd.drag_and_denoise, backbones=ALL),
    "gooddrag-plus": DragMethod("gooddrag-plus", aidd.drag_and_denoise, faithful=False, backbones=ALL),
    "freedrag": DragMethod("freedrag", freedrag.run, backbones=("sd", "sdxl")),
    "fastdrag": DragMethod("fastdrag", fastdrag.run, backbones=("sd",), check_inputs=fastdrag.check_inputs,
                           mask_required=fastdrag.NO_MASK,
                           inversion_context=fastdrag.inversion_context),
    "dragnoise": DragMethod("dragnoise", dragnoise.run, backbones=("sd", "sdxl")),
}
"""``gooddrag`` (AIDD, Eq. 8), ``dragdiffusion`` (one timestep, Eq. 4) and ``freedrag`` (templates and a
line search, :mod:`gooddrag.methods.freedrag`) do what their authors' code does; ``gooddrag-plus`` is
AIDD with our options (docs/method.md, "GoodDrag+"). FreeDrag's authors ran SD1.5 only; on SDXL it is
ours (presets ``freedrag-sdxl*``). ``fastdrag`` (one latent warp, the inversion's keys and values replayed,
:mod:`gooddrag.methods.fastdrag`) runs SD only, as its authors' code does; with the model's own UNet
where theirs swaps in an LCM-distilled one (docs/method.md, "FastDrag"). ``dragnoise`` (the UNet's
bottleneck optimised and fed to the denoising, :mod:`gooddrag.methods.dragnoise`) does what its
authors' code does; they ran SD1.5 only, so on SDXL it is ours (presets ``dragnoise-sdxl*``)."""


def get_method(name: str) -> DragMethod:
    """The method called ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise GoodDragError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def check_mask_given(name: str, mask) -> None:
    """Refuse a run of method ``name`` without a mask when the method needs one (its
    ``mask_required`` sentence): what the front ends call before loading a model."""
    reason = get_method(name).mask_required
    if mask is None and reason:
        raise InputsCannotWorkError(reason)


__all__ = ["METHODS", "get_method", "check_mask_given"]
