"""Reading a user's inputs: images, masks, point lists and benchmark sample folders.

Points are always (x, y) image pixels of the image they were given for.
Two benchmark layouts are read:

- Drag100 (GoodDrag): ``original.jpg``, ``mask.png`` (editable region white),
  ``points.json`` = ``{"points": [[x, y] handle, [x, y] target, ...]}``;
- DragBench (DragDiffusion): ``original_image.png`` and ``meta_data.pkl`` =
  ``{"prompt": str, "points": [[x, y], ...] alternating, "mask": (H, W) 0/1}``.

A third, the web UI's example folders (``gooddrag/assets/examples/*``), is Drag100's with
``image.png`` for the picture, so ``gooddrag edit`` opens them too.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.geometry import check_mask_covers_points, check_points, fit_mask  # noqa: F401 - the input checks live with the frames
from ..errors import GoodDragError

logger = logging.getLogger(__name__)

DRAG100_FILES = ("original.jpg", "mask.png", "points.json")
DRAGBENCH_FILES = ("original_image.png", "meta_data.pkl")
EXAMPLE_FILES = ("image.png", "mask.png", "points.json")


@dataclass
class Sample:
    """One drag task: image, optional mask (H, W) bool, points (N, 2) (x, y) each, prompt."""

    image: Image.Image
    handle_points: np.ndarray
    target_points: np.ndarray
    mask: np.ndarray | None = None
    prompt: str = ""
    name: str = "input"
    layout: str = "flags"
    files: dict[str, Path] = field(default_factory=dict)
    """Role -> file the sample was read from (hashed into run.json)."""


def _read_image(path: str | Path, what: str, convert) -> Image.Image | np.ndarray:
    """``convert(opened image)`` for an image file, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GoodDragError(f"{what} {str(path)!r}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except Image.DecompressionBombError:
        raise GoodDragError(f"{what} {str(path)!r} has too many pixels (over {Image.MAX_IMAGE_PIXELS})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise GoodDragError(f"{what} {str(path)!r} cannot be read as an image ({type(err).__name__})") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, or raise a one-line error naming the file."""
    return _read_image(path, "image", lambda im: im.convert("RGB"))


def mask_from_array(arr: np.ndarray, what: str) -> np.ndarray:
    """A 2-D array whose values are two levels, 0 and one other (1 or 255, say) -> bool."""
    arr = np.asarray(arr)
    if arr.ndim == 3:  # RGB(A) mask: use the first channel if all channels agree
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[-1], 3))):
            raise GoodDragError(f"mask {what} is a colour image; give a black-and-white mask")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise GoodDragError(f"mask {what} must be 2-D, got shape {arr.shape}")
    levels = np.unique(arr)
    if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
        raise GoodDragError(
            f"mask {what} is not binary: it has {len(levels)} levels ({levels.min()}..{levels.max()}); "
            "use black (0) for keep and white for editable"
        )
    return arr > 0


def load_mask(path: str | Path) -> np.ndarray:
    """Read a black/white mask image (white = editable) as a bool (H, W) array."""
    arr = _read_image(
        path, "mask", lambda im: np.array(im.convert("L") if im.mode in ("1", "P", "LA", "I", "I;16") else im)
    )
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return mask_from_array(arr, repr(str(path)))


_PAIR = re.compile(r"^\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*>\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*$")


def parse_points(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``"x,y>x,y; x,y>x,y"`` (handle > target, pairs separated by ';') -> (handles, targets)."""
    pairs = [p for p in text.split(";") if p.strip()]
    if not pairs:
        raise GoodDragError("--points is empty; write pairs as 'x,y>x,y; x,y>x,y'")
    handles, targets = [], []
    for i, pair in enumerate(pairs, 1):
        m = _PAIR.match(pair)
        if not m:
            raise GoodDragError(f"point pair {i} {pair.strip()!r} is not 'x,y>x,y'")
        try:
            x0, y0, x1, y1 = (float(v) for v in m.groups())
        except ValueError:
            raise GoodDragError(f"point pair {i} {pair.strip()!r} has a coordinate that is not a number") from None
        handles.append((x0, y0))
        targets.append((x1, y1))
    return np.array(handles), np.array(targets)


def split_point_list(points, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The benchmarks' flat list ``[[x, y] handle, [x, y] target, ...]`` -> (handles, targets)."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise GoodDragError(f"points in {what} are not a list of [x, y] pairs") from None
    if arr.ndim == 1:  # a flat list of numbers
        if arr.size % 2:
            raise GoodDragError(f"points in {what}: odd number of coordinates ({arr.size})")
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise GoodDragError(f"points in {what} are not a list of [x, y] pairs (shape {arr.shape})")
    if len(arr) == 0:
        raise GoodDragError(f"points in {what}: the list is empty")
    if len(arr) % 2:
        raise GoodDragError(f"points in {what}: odd number of points ({len(arr)}); they alternate handle, target")
    return arr[0::2], arr[1::2]


def sample_layout(folder: Path) -> str | None:
    """``"drag100"``, ``"dragbench"``, ``"example"`` (the web UI's) or None, from the files present."""
    if all((folder / f).is_file() for f in DRAGBENCH_FILES):
        return "dragbench"
    if (folder / "original.jpg").is_file() and (folder / "points.json").is_file():
        return "drag100"
    if (folder / "image.png").is_file() and (folder / "points.json").is_file():
        return "example"
    return None


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers and numpy arrays: a sample's
    pickle comes from a download, and a full unpickler would run any code in it."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("numpy", "float64"), ("numpy", "int64"),
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("codecs", "encode"),
        ("_codecs", "encode"),  # how pickle protocols 0-2 store bytes
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_sample(folder: str | Path) -> Sample:
    """Read a Drag100 or DragBench sample folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GoodDragError(f"sample folder {str(folder)!r}: no such folder")
    layout = sample_layout(folder)
    if layout in ("drag100", "example"):
        image_path, mask_path, points_path = (folder / f for f in (DRAG100_FILES if layout == "drag100" else EXAMPLE_FILES))
        image = load_image(image_path)
        try:
            meta = json.loads(points_path.read_text())
            points = meta["points"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise GoodDragError(f"{str(points_path)!r} is not JSON with a 'points' list") from None
        handles, targets = split_point_list(points, repr(str(points_path)))
        mask = load_mask(mask_path) if mask_path.is_file() else None
        files = {"image": image_path, "points": points_path} | ({"mask": mask_path} if mask is not None else {})
        prompt = meta.get("prompt", "") if isinstance(meta, dict) else ""
        return Sample(image, handles, targets, mask, prompt, folder.name, layout, files)
    if layout == "dragbench":
        image_path, meta_path = (folder / f for f in DRAGBENCH_FILES)
        image = load_image(image_path)
        try:
            meta = _NumpyUnpickler(io.BytesIO(meta_path.read_bytes())).load()
            points = meta["points"]
        except Exception as err:  # noqa: BLE001 - any failure to unpickle means a bad file
            raise GoodDragError(
                f"{str(meta_path)!r} is not a DragBench meta_data.pkl ({type(err).__name__}: {str(err)[:100]})"
            ) from None
        handles, targets = split_point_list(points, repr(str(meta_path)))
        mask = meta.get("mask")
        mask = mask_from_array(np.asarray(mask), f"in {str(meta_path)!r}") if mask is not None else None
        prompt = str(meta.get("prompt", "") or "")
        return Sample(image, handles, targets, mask, prompt, folder.name, layout, {"image": image_path, "meta": meta_path})
    raise GoodDragError(
        f"{str(folder)!r} is not a sample folder: expected Drag100 ({', '.join(DRAG100_FILES)}), "
        f"DragBench ({', '.join(DRAGBENCH_FILES)}) or a web UI example ({', '.join(EXAMPLE_FILES)})"
    )
