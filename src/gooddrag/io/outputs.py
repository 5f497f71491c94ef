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
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..core.atomic import atomic_folder
from ..errors import GoodDragError

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
        # darken what must stay to 0.6 of its value; a lookup table and a composite rather than
        # float arrays: 2 s -> 0.1 s at 12 megapixels (same values: the table is float32, truncated)
        dark = out.point(list((np.arange(256, dtype=np.float32) * np.float32(0.6)).astype(np.uint8)) * 3)
        out = Image.composite(out, dark, Image.fromarray(np.asarray(mask, dtype=bool)))
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


GIF_MAX_SIDE = 512
"""The trajectory GIF's frames are scaled down to fit this many pixels (a GIF of full-size
frames of a 12-megapixel picture took minutes to write); the PNGs keep the full size."""
FAST_PNG_PIXELS = 4_000_000
"""Pictures larger than this are written with zlib level 1 instead of Pillow's default 6:
about twice as fast to write, files somewhat larger (same pixels)."""


OVERLAY_MAX_SIDE = 2048
"""``input_with_points.png`` and ``result_with_points.png`` (views for people: the points are in
``new_points.json``) are scaled down to fit this many pixels; at 12 megapixels writing them at
full size took as long as the rest of the folder."""


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) scaled down (never up) to fit ``max_side``, keeping the aspect ratio."""
    w, h = size
    f = min(1.0, max_side / max(w, h))
    return max(1, round(w * f)), max(1, round(h * f))


def overlay(image: Image.Image, handle_points, target_points, mask=None, final_points=None,
            max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """:func:`draw_points` on ``image`` scaled down to fit ``max_side`` (points and mask scaled with it)."""
    size = fit_size(image.size, max_side)
    if size == image.size:
        return draw_points(image, handle_points, target_points, mask, final_points)
    f = size[0] / image.width
    small = image.resize(size, Image.BILINEAR, reducing_gap=2.0)
    if mask is not None:
        mask = np.asarray(Image.fromarray(np.asarray(mask, dtype=bool)).resize(size, Image.NEAREST))
    scale = (lambda p: None if p is None else (np.asarray(p, dtype=np.float64) + 0.5) * f - 0.5)
    return draw_points(small, scale(handle_points), scale(target_points), mask, scale(final_points))


def png_compress_level(pixels: int) -> int:
    return 1 if pixels > FAST_PNG_PIXELS else 6


def gif_frames(frames: list[Image.Image], max_side: int = GIF_MAX_SIDE) -> list[np.ndarray]:
    """The trajectory's frames as RGB arrays scaled down (never up) to fit ``max_side``."""
    size = fit_size(frames[0].size, max_side)
    return [np.asarray((im if im.size == size else im.resize(size, Image.BILINEAR, reducing_gap=2.0))
                       .convert("RGB")) for im in frames]


def _write_gif(path: Path, frames: list[np.ndarray], duration_ms: int) -> None:
    """An animated GIF, looping. Each frame gets its own 256-colour palette by Pillow's fast
    octree quantizer (100x faster than the default median cut used by imageio: 3.4 s for
    12 frames of 512x384 here; a drag's frames are smooth pictures, the loss is not visible)."""
    q = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    q[0].save(path, save_all=True, append_images=q[1:], duration=duration_ms, loop=0)


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

    ``result`` is a :class:`gooddrag.methods.pipeline.DragResult`.
    """
    out = prepare_out_dir(out, overwrite)
    with atomic_folder(out) as tmp:
        level = png_compress_level(input_image.width * input_image.height)
        images = {
            "edited.png": lambda: result.image,
            "input.png": lambda: input_image,
            "input_with_points.png": lambda: overlay(input_image, result.initial_handle_points,
                                                     result.target_points, mask),
            "result_with_points.png": lambda: overlay(result.image, result.initial_handle_points,
                                                      result.target_points, final_points=result.handle_points),
        }
        if mask is not None:
            images["mask.png"] = lambda: Image.fromarray(mask.astype(np.uint8) * 255)
        jobs = [lambda name=name, make=make: make().save(tmp / name, compress_level=level)
                for name, make in images.items()]
        gif_size = None
        if result.trajectory:
            frames = gif_frames(result.trajectory)
            gif_size = list(frames[0].shape[1::-1])
            jobs.append(lambda: _write_gif(tmp / "trajectory.gif", frames, gif_duration_ms))
        # Pillow's PNG and GIF encoders release the GIL: the files are written side by side
        # (a 12-megapixel result's folder in about half the time on 2 cores)
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            for done in [pool.submit(job) for job in jobs]:
                done.result()
        points = {
            "frame": "x, y pixels of the input image",
            "handle_points": result.initial_handle_points.tolist(),
            "target_points": result.target_points.tolist(),
            "new_handle_points": np.round(result.handle_points, 3).tolist(),
        }
        (tmp / "new_points.json").write_text(json.dumps(points, indent=2))
        views = {"input_with_points.png": list(fit_size(input_image.size, OVERLAY_MAX_SIDE))}
        if gif_size is not None:
            views["trajectory.gif"] = gif_size
        run_record = run_record | {"views": {
            "sizes": views, "note": f"the points views fit {OVERLAY_MAX_SIDE} px and the trajectory's frames "
                                    f"{GIF_MAX_SIDE} px; edited.png, input.png and mask.png are full size"}}
        (tmp / "run.json").write_text(json.dumps(run_record, indent=2, default=str))
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
