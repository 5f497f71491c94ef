"""Scoring a drag result on a ``DragCase`` (pure numpy; images are (H, W, 3) uint8).

**Where did the object go?** ``find_object`` segments a moved object by colour:
the pixels inside the case's mask whose RGB colour lies within
``COLOUR_THRESHOLD`` = 60 (Euclidean, 0..255 scale) of a colour of the object's
palette. 60 is half the generator's minimum distance (120) between the palettes
of different objects and between any palette colour and the background, so a
pixel can match at most one object and never the untouched background, while a
generative model may still shift the colours by ~35 levels per channel. The
object is *lost* when fewer than 25 % of its area is found.

**Position error** of a moved object = distance between its segmented centroid
in the result and its segmented centroid in the ground truth, i.e. the same
estimator on both sides, so the estimator's own bias (edge pixels are
anti-aliased against a varying background, so the segmented centroid may differ
from the coverage-weighted one by a few hundredths of a px) cancels and the
ground truth scores exactly 0. The unedited input scores |d| (to within that
same small edge effect), i.e. a relative error of ~1.

**Success**: every moved object within ``max(2, 0.05 * size)`` px of its place.
0.05 * size is half the smallest drag (|d| >= 0.10 * size), so doing nothing
always fails and success means the object is nearer its target than any
untouched start could be; the 2 px floor keeps the test meaningful at small
sizes, where a one-pixel colour/edge wobble moves a centroid by ~1 px.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .scenes import DragCase, compose

COLOUR_THRESHOLD = 60.0
LOST_FRACTION = 0.25
PSNR_CAP = 100.0  # dB; inf (identical pixels) counts as this in averages


def find_object(image: np.ndarray, case: DragCase, obj_index: int) -> tuple[np.ndarray | None, int]:
    """(centroid (x, y) or None if lost, number of pixels found) of object
    ``case.objects[obj_index]`` in ``image``, segmented by colour inside ``case.mask``."""
    obj = case.objects[obj_index]
    img = np.asarray(image, dtype=np.float64)
    pal = np.asarray(obj.palette, dtype=np.float64)
    d2 = ((img[:, :, None, :] - pal[None, None]) ** 2).sum(-1).min(-1)
    ys, xs = np.nonzero((d2 < COLOUR_THRESHOLD ** 2) & case.mask)
    count = len(xs)
    if count == 0 or count < LOST_FRACTION * obj.area:
        return None, count
    return np.array([xs.mean(), ys.mean()]), count


def position_error(result: np.ndarray, case: DragCase) -> np.ndarray:
    """Per moved object (in ``case.moved`` order): px between the object's segmented
    centroid in ``result`` and in ``case.ground_truth``; inf where it is lost."""
    errs = []
    for i in case.moved:
        ref, _ = find_object(case.ground_truth, case, i)
        found, _ = find_object(result, case, i)
        errs.append(math.inf if found is None or ref is None else float(np.linalg.norm(found - ref)))
    return np.asarray(errs)


def relative_error(result: np.ndarray, case: DragCase) -> np.ndarray:
    """``position_error`` divided by each moved object's drag length |d|."""
    return position_error(result, case) / np.linalg.norm(case.displacements, axis=1)


def _select(a, b, mask):
    x = np.asarray(a, dtype=np.float64) / 255.0
    y = np.asarray(b, dtype=np.float64) / 255.0
    if mask is not None:
        x, y = x[np.asarray(mask, dtype=bool)], y[np.asarray(mask, dtype=bool)]
    return x, y


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of images in [0, 255] compared on [0, 1] (peak 1.0), over all pixels or
    those where ``mask`` (H, W) is True; inf when equal, nan when the mask is empty."""
    x, y = _select(a, b, mask)
    if x.size == 0:
        return math.nan
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def l1(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference on [0, 1] over all (masked) pixels and channels."""
    x, y = _select(a, b, mask)
    return math.nan if x.size == 0 else float(np.mean(np.abs(x - y)))


def placed_oracle(result: np.ndarray, case: DragCase, extra=None) -> np.ndarray | None:
    """The ground truth re-rendered with each moved object where ``result`` put it: shifted on by
    the result's position error (segmented centroid in ``result`` minus that in the ground truth,
    sub-pixel, :meth:`ShapeObject.coverage`), or by ``extra`` = (dx, dy) px when given. None when
    ``result`` lost a moved object. (H, W, 3) uint8."""
    shifts = {}
    for i, d in zip(case.moved, case.displacements):
        if extra is None:
            ref, _ = find_object(case.ground_truth, case, i)
            found, _ = find_object(result, case, i)
            if found is None or ref is None:
                return None
            err = found - ref
        else:
            err = np.asarray(extra, dtype=np.float64)
        shifts[i] = (float(d[0] + err[0]), float(d[1] + err[1]))
    return compose(case.background, case.objects, shifts)


def shape_psnr(result: np.ndarray, case: DragCase) -> float:
    """**Shape PSNR** (dB): ``result`` against :func:`placed_oracle` (the exact scene with every
    moved object where ``result`` put it), inside the case's mask. Position is taken out, so this
    scores the objects' shape, colour and the uncovered background only; nan when an object is
    lost (its position is undefined; ``n_lost`` counts it)."""
    oracle = placed_oracle(result, case)
    return math.nan if oracle is None else psnr(result, oracle, case.mask)


def success_threshold(size: int) -> float:
    """Default success radius in px (see module docstring)."""
    return max(2.0, 0.05 * size)


def case_metrics(result: np.ndarray, case: DragCase, success_threshold_px: float | None = None) -> dict:
    """Scores of one result: ``position_error`` / ``relative_error`` (means over the
    moved objects; inf if one is lost), ``n_lost``, ``success`` (every moved object
    within the threshold), ``psnr_in_mask`` / ``l1_in_mask`` (vs the ground truth
    inside the mask), ``shape_psnr`` (:func:`shape_psnr`) and ``psnr_outside_mask`` (vs the input
    outside it)."""
    thr = success_threshold(case.size) if success_threshold_px is None else float(success_threshold_px)
    err = position_error(result, case)
    rel = err / np.linalg.norm(case.displacements, axis=1)
    return {
        "position_error": float(err.mean()),
        "relative_error": float(rel.mean()),
        "n_lost": int(np.isinf(err).sum()),
        "success": bool(np.all(err < thr)),
        "psnr_in_mask": psnr(result, case.ground_truth, case.mask),
        "l1_in_mask": l1(result, case.ground_truth, case.mask),
        "shape_psnr": shape_psnr(result, case),
        "psnr_outside_mask": psnr(result, case.image, ~case.mask),
    }


def summarize(rows) -> dict:
    """Per method (``row["method"]``, "all" when absent) over rows of ``case_metrics``
    (plus optional ``seconds``): n, median / mean position error (the mean over cases
    where nothing was lost), lost rate, median relative error, success rate, mean
    PSNRs (inf capped at ``PSNR_CAP``), mean L1 and mean seconds per case."""
    groups = defaultdict(list)
    for r in rows:
        groups[r.get("method", "all")].append(r)
    out = {}
    for method, rs in groups.items():
        err = np.array([r["position_error"] for r in rs], dtype=np.float64)
        found = err[np.isfinite(err)]

        def mean(key, cap=None):
            v = np.array([r[key] for r in rs], dtype=np.float64)
            v = v[~np.isnan(v)]
            if cap is not None:
                v = np.minimum(v, cap)
            return float(v.mean()) if v.size else math.nan

        s = {
            "n": len(rs),
            "median_position_error": float(np.median(err)),
            "mean_position_error": float(found.mean()) if found.size else math.nan,
            "lost_rate": float(np.mean([r.get("n_lost", 0) > 0 for r in rs])),
            "median_relative_error": float(np.median([r["relative_error"] for r in rs])),
            "success_rate": float(np.mean([bool(r["success"]) for r in rs])),
            "mean_psnr_in_mask": mean("psnr_in_mask", PSNR_CAP),
            "mean_psnr_outside_mask": mean("psnr_outside_mask", PSNR_CAP),
            "mean_shape_psnr": mean("shape_psnr", PSNR_CAP) if any("shape_psnr" in r for r in rs) else math.nan,
            "mean_l1_in_mask": mean("l1_in_mask"),
        }
        if any("seconds" in r for r in rs):
            s["mean_seconds"] = float(np.mean([r["seconds"] for r in rs if "seconds" in r]))
        out[method] = s
    return out
