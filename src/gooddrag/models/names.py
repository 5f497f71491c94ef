"""Model names: the shipped model and the default hub id, usable by name everywhere.

``gooddrag edit --model shapes-64``, ``gooddrag bench run --model shapes-64``,
``DragPipeline.from_pretrained("shapes-64")`` and the web UI all take the same
names. :func:`gooddrag.models.loading.load_components` resolves a name at its start
(:func:`resolve`), so a name never reaches the file system or the hub as a path.
Anything that is not a name is passed through unchanged (a hub id, a folder or
a single file).

This module sits with the model plumbing: it imports only the standard library
and :mod:`gooddrag.errors`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import GoodDragError

SHAPES_MODEL = "shapes-64"
"""The small offline model shipped inside the package (64x64 synthetic scenes)."""
SHAPES_DIT_MODEL = "shapes-dit-64"
"""Its flow-matching transformer counterpart (an SD3-layout MMDiT on the same scenes)."""
DEFAULT_HUB_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""Stable Diffusion 1.5 on the hub (maintained mirror of the removed runwayml repository)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the tools know about a named model.

    location: a hub id, or (``shipped``) a folder inside the installed package;
    presets: the preset family made for it (``"shapes"``, ``"shapes-dit"``), else ``""`` (read from its configs);
    native_size: the image side it was trained on (a warning is shown when a
    picture is far from it); domain: a few words on what it draws.
    """

    name: str
    location: str
    shipped: bool = False
    presets: str = ""
    native_size: int = 512
    domain: str = "photos and art (Stable Diffusion 1.x)"


def shipped_model_dir(name: str = SHAPES_MODEL) -> Path:
    """Folder of a shipped model inside the installed package."""
    path = Path(str(resources.files("gooddrag") / "assets" / name))
    if not (path / "model_index.json").is_file():
        raise GoodDragError(f"the shipped model {name} is missing from this installation")
    return path


BUILTIN = {
    SHAPES_MODEL: ModelInfo(SHAPES_MODEL, SHAPES_MODEL, shipped=True, presets="shapes", native_size=64,
                            domain="flat coloured shapes on a plain background, 64x64"),
    SHAPES_DIT_MODEL: ModelInfo(SHAPES_DIT_MODEL, SHAPES_DIT_MODEL, shipped=True, presets="shapes-dit",
                                native_size=64, domain="flat coloured shapes on a plain background, 64x64"),
    DEFAULT_HUB_MODEL: ModelInfo(DEFAULT_HUB_MODEL, DEFAULT_HUB_MODEL),
}
"""The names known without configuration: the shipped model and the default hub id."""


def info(model: str | None) -> ModelInfo | None:
    """The :class:`ModelInfo` of a built-in name, or of the folder a shipped name resolves
    to (so a loaded pipeline's ``source.location`` finds its preset too); None otherwise."""
    text = (model or "").strip()
    if text in BUILTIN:
        return BUILTIN[text]
    for known in BUILTIN.values():
        if known.shipped and text and Path(text).name == known.name:
            try:
                if Path(text).resolve() == shipped_model_dir(known.name).resolve():
                    return known
            except GoodDragError:
                return None
    return None


def resolve(model: str) -> str:
    """A built-in name -> what the loaders read (the shipped folder, or the hub id);
    anything else unchanged."""
    known = info(model)
    if known is None:
        return model
    return str(shipped_model_dir(known.name)) if known.shipped else known.location


def size_warning(model: str | None, width: int, height: int) -> str | None:
    """A sentence when a picture does not fit a named model's native size (None when it
    fits, or the model is not a known name)."""
    known = info(model)
    if known is None:
        return None
    side = max(width, height)
    if side * 2 < known.native_size:
        return (f"this {width}x{height} picture is much smaller than the {known.native_size} px model "
                f"{known.name} works at: it is upscaled, expect a blurry result")
    if side > 2 * known.native_size:
        return (f"model {known.name} was trained on {known.domain} ({known.native_size} px); "
                f"this {width}x{height} picture is far from that, expect a poor result")
    return None


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH_OR_ID`` (``gooddrag ui --model``) -> (name, location). A bare built-in
    name or hub id names itself; a bare path is refused (clients would see it)."""
    text = (spec or "").strip()
    if "=" in text:
        name, _, location = text.partition("=")
        name, location = name.strip(), location.strip()
        if not name or not location:
            raise GoodDragError(f"--model {spec!r}: write NAME=PATH_OR_ID, e.g. mine=/models/my-sd15")
        return name, location
    if not text:
        raise GoodDragError("--model needs a value: NAME=PATH_OR_ID or a built-in name")
    if text.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(text)) or text.count("/") > 1:
        raise GoodDragError(f"--model {text!r} is a path: give it a name, --model NAME={text} "
                            "(clients see the name only)")
    return text, text
