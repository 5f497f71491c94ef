"""Writing a result folder: images, points, the drag's GIF and ``run.json``.

A folder is written under a temporary name next to its destination and moved
into place at the end, so a crash never leaves half a result, and an existing
folder is only replaced when the caller asked for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .errors import GoodDragError

HANDLE_COLOR = (230, 40, 40)
TARGET_COLOR = (40, 90, 230)
ARROW_COLOR = (255, 255, 255)
FINAL_COLOR = (250, 200, 30)

RESULT_FILES = (
    "edited.png", "input.png", "input_with_points.png", "result_with_points.png",
    "new_points.json", "run.json",
)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in ("gooddrag", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def draw_points(
    image: Image.Image,
    handle_points: np.ndarray,
    target_points: np.ndarray,
    mask: np.ndarray | None = None,
    final_points: np.ndarray | None = None,
) -> Image.Image:
    """Image with the mask tinted, handles (red), targets (blue), an arrow per pair,
    and optionally the final handle positions (yellow). Points are (x, y) pixels."""
    out = image.convert("RGB").copy()
    if mask is not None and mask.shape == (out.height, out.width) and not mask.all():
        arr = np.asarray(out).astype(np.float32)
        arr[~mask] *= 0.6  # darken what must stay
        out = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    r = max(3, round(min(out.size) / 100))
    width = max(1, r // 2)
    for (hx, hy), (tx, ty) in zip(handle_points, target_points):
        draw.line([(hx, hy), (tx, ty)], fill=ARROW_COLOR, width=width)
        ang = math.atan2(ty - hy, tx - hx)
        head = [(tx, ty)] + [
            (tx - 3 * r * math.cos(ang + s * 0.45), ty - 3 * r * math.sin(ang + s * 0.45)) for s in (-1, 1)
        ]
        draw.polygon(head, fill=ARROW_COLOR)
        draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=HANDLE_COLOR, outline=(0, 0, 0))
        draw.ellipse([tx - r, ty - r, tx + r, ty + r], fill=TARGET_COLOR, outline=(0, 0, 0))
    if final_points is not None:
        for fx, fy in final_points:
            draw.rectangle([fx - r, fy - r, fx + r, fy + r], outline=FINAL_COLOR, width=width)
    return out


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Check before any work that ``out`` may be written: refuse an existing folder unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GoodDragError(f"output {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GoodDragError(f"output folder {str(out)!r} already exists; pass --overwrite to replace it")
    return out


def write_result_folder(
    out: str | Path,
    *,
    input_image: Image.Image,
    result,
    mask: np.ndarray | None,
    run_record: dict[str, Any],
    overwrite: bool,
    gif_duration_ms: int = 400,
) -> Path:
    """Write every output of one edit to ``out`` atomically; returns the folder.

    ``result`` is a :class:`gooddrag.pipeline.DragResult`.
    """
    out = prepare_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        result.image.save(tmp / "edited.png")
        input_image.save(tmp / "input.png")
        if mask is not None:
            Image.fromarray((mask.astype(np.uint8) * 255)).save(tmp / "mask.png")
        draw_points(input_image, result.initial_handle_points, result.target_points, mask).save(
            tmp / "input_with_points.png"
        )
        draw_points(
            result.image, result.initial_handle_points, result.target_points, final_points=result.handle_points
        ).save(tmp / "result_with_points.png")
        points = {
            "frame": "x, y pixels of the input image",
            "handle_points": result.initial_handle_points.tolist(),
            "target_points": result.target_points.tolist(),
            "new_handle_points": np.round(result.handle_points, 3).tolist(),
        }
        (tmp / "new_points.json").write_text(json.dumps(points, indent=2))
        if result.trajectory:
            import imageio.v3 as iio

            frames = [np.asarray(f.convert("RGB")) for f in result.trajectory]
            iio.imwrite(tmp / "trajectory.gif", frames, extension=".gif", duration=gif_duration_ms, loop=0)
        (tmp / "run.json").write_text(json.dumps(run_record, indent=2, default=str))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def remove_stale_partials(out: str | Path) -> list[Path]:
    """Remove the half-written ``.NAME.tmp-*`` folders under ``out`` (recursively) whose ``NAME``
    folder exists beside them: a process killed while writing NAME left them, and NAME was written
    in full since (by a retry). A partial whose result does not exist yet is kept: its writer may
    still be running. Returns the removed paths."""
    removed = []
    for tmp in sorted(Path(out).rglob(".*.tmp-*")):
        name = tmp.name[1:].rsplit(".tmp-", 1)[0]
        if tmp.is_dir() and (tmp.parent / name / "run.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def run_record(
    *, result, config, seed: int | None, inputs: dict[str, Any], model: dict[str, Any], argv: list[str] | None = None
) -> dict[str, Any]:
    """The reproducibility record of one edit (``run.json``)."""
    return {
        "gooddrag_version": package_versions().get("gooddrag"),
        "command": argv if argv is not None else sys.argv,
        "seed": seed,
        "config": config.to_dict(),
        "inputs": inputs,
        "model": model,
        "versions": package_versions(),
        "platform": platform.platform(),
        "working_size": list(result.working_size),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "stats": {
            "drag_timesteps": result.stats.drag_timesteps,
            "drag_steps": result.stats.drag_steps,
            "tracking_steps": result.stats.tracking_steps,
            "drag_rounds": result.stats.drag_rounds,
            "drag_steps_per_timestep": result.stats.drag_steps_per_timestep,
            "stop_reason": result.stats.stop_reason,
        },
        "lora": result.lora,
        "handle_points": result.initial_handle_points.tolist(),
        "target_points": result.target_points.tolist(),
        "new_handle_points": np.round(result.handle_points, 3).tolist(),
    }
