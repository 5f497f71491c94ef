"""Drag-editing metrics: DAI (Drag100), MD's matching step (DragBench) and IF = 1 - LPIPS(alex).

Points are (x, y) pixels of the image they belong to; images are float
(H, W, 3) arrays in [0, 1] unless said otherwise. Everything here is a pure
function except :func:`load_lpips_alex`, which reads weight files.

DAI (Dragging Accuracy Index, GoodDrag, ICLR 2025; lower is better)
    For a pair (handle h, target g) and radius gamma, the patch offsets are
    ``d in [-gamma, gamma]^2`` (inclusive, (2 gamma + 1)^2 pixels). The pair's
    error is the squared difference between ORIGINAL[h + d] and RESULT[g + d],
    summed over the RGB channels and averaged over the patch's pixels, which
    is the authors' per-patch normalisation (``np.sum(...) / (2 r + 1)^2`` in
    their ``compute_DAI.py``). Borders: an offset is used only where BOTH
    ``h + d`` and ``g + d`` lie inside the image, so the two patches stay
    aligned pixel for pixel; our DAI averages over those valid pixels.
    Points are rounded to the nearest pixel.

    - ``dai`` (ours): the mean over the pairs (divide by N once).
    - ``dai(..., authors_variant=True)``: the authors' script divides the sum
      over pairs by N twice, and divides each patch by the full
      (2 gamma + 1)^2 even where the patch is cut by the border. Equal to ours
      for one pair away from the borders; use it only to compare with their
      published numbers.

MD (mean distance, DragDiffusion's DragBench; lower is better)
    :func:`match_points` is the matching step: the feature of each handle in
    the ORIGINAL image's (upsampled) feature map, the cosine similarity with
    every pixel of the RESULT's map, the best pixel (ties: first in row-major
    order); :func:`pair_distances` the pixel distance to each target. The
    features are DIFT's (:mod:`gooddrag.benchmark.dift`).

IF (image fidelity; higher is better)
    ``1 - LPIPS`` with LPIPS v0.1 on AlexNet (Zhang et al., CVPR 2018) between
    input and result, both resized bilinearly to 224 x 224 in [-1, 1], as in
    DragDiffusion's evaluation script. :func:`load_lpips_alex` rebuilds the
    network without torchvision from two weight files: the linear heads the
    ``lpips`` package ships (``weights/v0.1/alex.pth``) and torchvision's
    ImageNet AlexNet checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import socket
from pathlib import Path

import numpy as np

from ..errors import GoodDragError

DAI_GAMMAS = (1, 5, 10, 20)
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
IF_SIZE = 224
# DIFT as DragBench's MD uses it (gooddrag.benchmark.dift)
DEFAULT_DIFT_MODEL = "stabilityai/stable-diffusion-2-1"
DIFT_T = 261
DIFT_UP_FT_INDEX = 1
DIFT_ENSEMBLE = 8


# ----------------------------------------------------------------------- images
def to_float01(image) -> np.ndarray:
    """PIL image or uint8/float array -> float64 (H, W, 3) in [0, 1] (uint8 / 255)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def _pixel(point, what: str, size: tuple[int, int]) -> tuple[int, int]:
    """(x, y) float -> nearest (x, y) int pixel, which must lie in an image of ``size`` = (H, W)."""
    H, W = size
    x, y = (int(math.floor(float(v) + 0.5)) for v in point)
    if not (0 <= x < W and 0 <= y < H):
        raise GoodDragError(f"{what} ({float(point[0]):g}, {float(point[1]):g}) is outside the {W}x{H} image")
    return x, y


# -------------------------------------------------------------------------- DAI
def patch_error(original: np.ndarray, result: np.ndarray, handle, target, gamma: int) -> tuple[float, int]:
    """Sum over the valid patch of the squared differences (all channels), and the number of valid pixels.

    original, result: (H, W, C) floats, same shape. handle, target: (x, y).
    An offset d in [-gamma, gamma]^2 is valid where handle + d and target + d
    both lie inside the image.
    """
    if original.shape != result.shape:
        raise GoodDragError(f"original {original.shape} and result {result.shape} differ in size")
    if gamma < 0:
        raise GoodDragError(f"DAI radius must be >= 0, got {gamma}")
    H, W = original.shape[:2]
    hx, hy = _pixel(handle, "handle", (H, W))
    tx, ty = _pixel(target, "target", (H, W))
    # valid offsets per axis: both -gamma <= d <= gamma and 0 <= p + d < size for p in (h, g)
    dy0, dy1 = max(-gamma, -hy, -ty), min(gamma, H - 1 - hy, H - 1 - ty)
    dx0, dx1 = max(-gamma, -hx, -tx), min(gamma, W - 1 - hx, W - 1 - tx)
    a = original[hy + dy0: hy + dy1 + 1, hx + dx0: hx + dx1 + 1]
    b = result[ty + dy0: ty + dy1 + 1, tx + dx0: tx + dx1 + 1]
    return float(np.sum((a - b) ** 2)), int((dy1 - dy0 + 1) * (dx1 - dx0 + 1))


def dai(original, result, handles, targets, gamma: int, *, authors_variant: bool = False) -> float:
    """Dragging Accuracy Index of one sample (see the module docstring); lower is better.

    original, result: images (PIL or arrays; uint8 is divided by 255).
    handles, targets: (N, 2) (x, y) pixels of the original / result image.
    """
    a, b = to_float01(original), to_float01(result)
    handles, targets = np.asarray(handles, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    n = len(handles)
    if n == 0 or len(targets) != n:
        raise GoodDragError(f"DAI needs as many targets as handles (>= 1), got {n} and {len(targets)}")
    errors = [patch_error(a, b, h, g, gamma) for h, g in zip(handles, targets)]
    if authors_variant:
        full = (2 * gamma + 1) ** 2
        return sum(s / full for s, _ in errors) / n / n
    return sum(s / count for s, count in errors) / n


# ------------------------------------------------------------------ MD matching
def match_points(src_features, dst_features, handles, size: tuple[int, int] | None = None,
                 chunk: int = 64):
    """For each handle (x, y), the (x, y) pixel of ``dst_features`` whose feature is most
    cosine-similar to the handle's feature in ``src_features``.

    src_features, dst_features: (C, h, w) or (1, C, h, w) arrays or tensors.
    size: (H, W) to upsample both maps to first (bilinear, align_corners False,
    as ``F.interpolate`` in DragBench's script), the frame of ``handles`` and of
    the answer; None = the maps' own frame. Handles are rounded to the nearest
    pixel. Ties go to the first pixel in row-major order. The upsampling is
    done ``chunk`` channels at a time, so a full-size map is never held.
    Returns an (N, 2) int64 numpy array of (x, y).
    """
    # heavy: torch
    import torch
    import torch.nn.functional as F

    src = torch.as_tensor(np.asarray(src_features) if not torch.is_tensor(src_features) else src_features)
    dst = torch.as_tensor(np.asarray(dst_features) if not torch.is_tensor(dst_features) else dst_features)
    src, dst = (t[0] if t.ndim == 4 else t for t in (src, dst))
    if src.ndim != 3 or src.shape != dst.shape:
        raise GoodDragError(f"feature maps must both be (C, h, w) of one shape, got {tuple(src.shape)} and {tuple(dst.shape)}")
    src, dst = src.float(), dst.to(src.device).float()
    C = src.shape[0]
    H, W = size if size is not None else tuple(src.shape[1:])
    pix = [_pixel(p, "handle", (H, W)) for p in np.asarray(handles, dtype=np.float64).reshape(-1, 2)]
    rows = torch.tensor([y for _, y in pix], device=src.device)
    cols = torch.tensor([x for x, _ in pix], device=src.device)

    def up(t):  # (c, h, w) -> (c, H, W)
        return t if size is None else F.interpolate(t[None], size=(H, W), mode="bilinear", align_corners=False)[0]

    vectors = torch.cat([up(src[c:c + chunk])[:, rows, cols] for c in range(0, C, chunk)]).T  # (N, C)
    dots = torch.zeros(len(pix), H, W, device=src.device)
    norm2 = torch.zeros(H, W, device=src.device)
    for c in range(0, C, chunk):
        d = up(dst[c:c + chunk])
        dots += torch.einsum("nc,chw->nhw", vectors[:, c:c + chunk], d)
        norm2 += (d * d).sum(0)
    # cosine as torch.nn.CosineSimilarity: x.y / max(|x| |y|, eps)
    cos = dots / torch.clamp(vectors.norm(dim=1)[:, None, None] * norm2.sqrt()[None], min=1e-8)
    best = cos.flatten(1).argmax(dim=1).cpu().numpy()
    return np.stack([best % W, best // W], axis=1).astype(np.int64)


def pair_distances(points, targets) -> np.ndarray:
    """Euclidean pixel distance of each point (x, y) to its target: (N,) floats."""
    p, t = np.asarray(points, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    return np.sqrt(((p - t) ** 2).sum(axis=1))


# -------------------------------------------------------------------------- IF
def lpips_weights_path(path: str | Path | None = None) -> Path:
    """The LPIPS v0.1 AlexNet linear heads: ``path``, else the file the ``lpips`` package ships.

    The package is located without importing it (importing it imports torchvision).
    """
    if path is not None:
        if not Path(path).is_file():
            raise GoodDragError(f"LPIPS weights {str(path)!r}: no such file")
        return Path(path)
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise GoodDragError(
            "IF needs the LPIPS linear weights that the lpips package ships (weights/v0.1/alex.pth): "
            "pip install --no-deps lpips, or pass --lpips-weights FILE"
        )
    found = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "alex.pth"
    if not found.is_file():
        raise GoodDragError(f"the lpips package has no {found}; reinstall lpips or pass --lpips-weights FILE")
    return found


def alexnet_weights_path(path: str | Path | None = None, *, download: bool = True) -> Path:
    """torchvision's ImageNet AlexNet checkpoint: ``path``, else torch hub's cache
    (``$TORCH_HOME/hub/checkpoints``, where torchvision and lpips keep it), else fetched there."""
    if path is not None:
        if not Path(path).is_file():
            raise GoodDragError(f"AlexNet weights {str(path)!r}: no such file")
        return Path(path)
    # heavy: torch
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if cached.is_file():
        return cached
    where = f"{cached.parent}/"
    if not download:
        raise GoodDragError(f"IF needs torchvision's AlexNet weights ({ALEXNET_URL}, 233 MB) in {where}; "
                            "download them there or pass --alexnet-weights FILE")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(ALEXNET_URL, str(cached), progress=False)
    except Exception as err:  # noqa: BLE001 - any network failure
        raise GoodDragError(
            f"IF needs torchvision's AlexNet weights ({ALEXNET_URL}, 233 MB) in {where} and they could not be "
            f"fetched ({type(err).__name__}); download them there or pass --alexnet-weights FILE"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return cached


def load_lpips_alex(alexnet_weights: str | Path | None = None, lpips_weights: str | Path | None = None,
                    device="cpu", *, download: bool = True):
    """LPIPS v0.1 (AlexNet, linear heads) as a torch module ``f(a, b) -> (B,)`` for
    images in [-1, 1] of shape (B, 3, H, W); identical to ``lpips.LPIPS(net='alex')``
    without needing torchvision."""
    # heavy: torch
    import torch
    from torch import nn

    lin_path = lpips_weights_path(lpips_weights)
    alex_path = alexnet_weights_path(alexnet_weights, download=download)

    class LpipsAlex(nn.Module):
        channels = (64, 192, 384, 256, 256)

        def __init__(self):
            super().__init__()
            # torchvision's AlexNet ``features`` (indices match its state dict)
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
            )
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.channels)
            self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
            self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

        def forward(self, a, b):
            taps = (1, 4, 7, 9, 11)  # relu1..relu5, lpips' slices of AlexNet
            total = 0
            fa, fb = (a - self.shift) / self.scale, (b - self.shift) / self.scale
            k = 0
            for i, layer in enumerate(self.features):
                fa, fb = layer(fa), layer(fb)
                if i in taps:
                    na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    total = total + self.lins[k]((na - nb) ** 2).mean((2, 3), keepdim=True)
                    k += 1
            return total.flatten()

    model = LpipsAlex()
    try:
        alex = torch.load(alex_path, map_location="cpu", weights_only=True)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in alex.items() if k.startswith("features.")}
        # lpips' heads are Sequential(Dropout, Conv2d): "lin0.model.1.weight"
        state |= {f"lins.{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(5)}
        state |= {"shift": model.shift, "scale": model.scale}
        model.load_state_dict(state)
    except (KeyError, RuntimeError, OSError, ValueError) as err:
        raise GoodDragError(
            f"cannot build LPIPS(alex) from {alex_path} and {lin_path}: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        ) from None
    return model.eval().requires_grad_(False).to(device)


def image_fidelity(original, result, model, size: int = IF_SIZE) -> float:
    """IF = 1 - LPIPS(original, result) at ``size`` x ``size`` (bilinear resize of [-1, 1] tensors)."""
    # heavy: torch
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device

    def prep(img):
        t = torch.as_tensor(to_float01(img), dtype=torch.float32).permute(2, 0, 1)[None] * 2 - 1
        return F.interpolate(t.to(device), size=(size, size), mode="bilinear", align_corners=False)

    with torch.no_grad():
        return 1.0 - float(model(prep(original), prep(result))[0])
