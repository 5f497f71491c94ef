"""The example gallery: shapes cases shipped as files, and ``examples/*`` of a source checkout.

The shapes examples are three cases of :func:`gooddrag.shapes.scenes.make_case`
(seeds 0, 1, 2) saved under ``gooddrag/assets/examples`` (``image.png``,
``mask.png``, ``points.json``), so the UI reads them as pictures and does not
depend on the shapes application; tests/test_ui_state.py checks that they still
equal what ``make_case`` draws.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import GoodDragError
from ..io.samples import load_image, load_mask, load_sample
from .state import interleave_points


@dataclass
class Example:
    name: str
    image: Image.Image
    mask: np.ndarray | None
    points: list[list[float]]
    prompt: str = ""


def shipped_examples_dir() -> Path:
    return Path(str(resources.files("gooddrag") / "assets" / "examples"))


def _read_shipped(folder: Path) -> tuple[int, Example]:
    meta = json.loads((folder / "points.json").read_text(encoding="utf-8"))
    example = Example(meta["name"], load_image(folder / "image.png"), load_mask(folder / "mask.png"),
                      [list(map(float, p)) for p in meta["points"]], meta.get("prompt", ""))
    return meta.get("seed", 0), example


def shipped_examples(repo_examples: bool = True) -> list[Example]:
    """Shapes cases (64x64, exact ground truth) and, from a source checkout, ``examples/*``."""
    root = shipped_examples_dir()
    found = [_read_shipped(f) for f in root.iterdir() if (f / "points.json").is_file()] if root.is_dir() else []
    out = [ex for _, ex in sorted(found, key=lambda item: item[0])]
    if repo_examples:
        checkout = Path(__file__).resolve().parents[3] / "examples"
        for folder in sorted(checkout.glob("*")) if checkout.is_dir() else []:
            try:
                s = load_sample(folder)
            except GoodDragError:
                continue
            out.append(Example(folder.name, s.image, s.mask, interleave_points(s.handle_points, s.target_points),
                               s.prompt))
    return out
