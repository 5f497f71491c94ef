"""Test data and small settings shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from gooddrag import get_preset

# Small settings for the tiny model: 128 px working side (latent 16x16,
# supervision grid 64x64), 10 DDIM steps, a short drag. The tiny UNet has 10
# self-attention layers (3 down, 1 mid, 6 up); layers 7.. are the last up block.
TINY = dict(
    resolution=128,
    lora_steps=0,
    num_inference_steps=10,
    drag_end_step=2,
    track_per_step=2,
    max_drag_per_track=2,
    r1=2,
    r2=4,
    beta=2.0,
    mutual_attention_start_layer=7,
)


def tiny_config(method: str = "gooddrag", **overrides):
    return get_preset(method, **(TINY | overrides))


def make_image(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    """A smooth gradient with a bright disc: deterministic, any size."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    img = np.stack([xx / width * 200, yy / height * 200, np.full_like(xx, 80.0)], -1)
    cy, cx = height * 0.5, width * 0.4
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(width, height) * 0.2) ** 2
    img[disc] = [250, 220, 40]
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_mask(width: int = 96, height: int = 80) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 5: height * 4 // 5, width // 6: width * 5 // 6] = True
    return mask


POINTS = [[38, 40], [60, 40]]  # (x, y) handle, target on the 96x80 test image


def write_drag100_sample(folder: Path, width: int = 96, height: int = 80) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_image(width, height).save(folder / "original.jpg", quality=95)
    Image.fromarray(make_mask(width, height).astype(np.uint8) * 255).save(folder / "mask.png")
    (folder / "points.json").write_text(json.dumps({"points": POINTS}))
    return folder


def write_dragbench_sample(folder: Path, width: int = 96, height: int = 80) -> Path:
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    make_image(width, height).save(folder / "original_image.png")
    meta = {"prompt": "a yellow disc", "points": POINTS, "mask": make_mask(width, height).astype(np.uint8)}
    (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta))
    return folder


def in_ci() -> bool:
    """True under CI=true (also 1 or yes)."""
    import os

    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip the calling test when ``condition`` is false; under CI=true fail instead (tests/conftest.py
    turns every skip there into a failure, except for tests marked ``may_skip_in_ci``)."""
    import pytest

    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing requirement is a failure, not a skip)")
    pytest.skip(reason)
