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

import dataclasses
import math
from collections import defaultdict

import numpy as np

from .pose import apply, estimate_pose, nearest_half_turn, pose_map
from .scenes import DEFORMATION_KINDS, DragCase, compose

COLOUR_THRESHOLD = 60.0
LOST_FRACTION = 0.25
PSNR_CAP = 100.0  # dB; inf (identical pixels) counts as this in averages


def object_pixels(image: np.ndarray, case: DragCase, obj_index: int) -> np.ndarray:
    """(H, W) bool: the pixels inside ``case.mask`` whose colour lies within COLOUR_THRESHOLD of
    a colour of object ``case.objects[obj_index]``'s palette."""
    obj = case.objects[obj_index]
    img = np.asarray(image, dtype=np.float64)
    pal = np.asarray(obj.palette, dtype=np.float64)
    d2 = ((img[:, :, None, :] - pal[None, None]) ** 2).sum(-1).min(-1)
    return (d2 < COLOUR_THRESHOLD ** 2) & case.mask


def is_lost(pixels: np.ndarray, case: DragCase, obj_index: int) -> bool:
    count = int(pixels.sum())
    return count == 0 or count < LOST_FRACTION * case.objects[obj_index].area


def find_object(image: np.ndarray, case: DragCase, obj_index: int) -> tuple[np.ndarray | None, int]:
    """(centroid (x, y) or None if lost, number of pixels found) of object
    ``case.objects[obj_index]`` in ``image``, segmented by colour inside ``case.mask``."""
    pixels = object_pixels(image, case, obj_index)
    ys, xs = np.nonzero(pixels)
    if is_lost(pixels, case, obj_index):
        return None, len(xs)
    return np.array([xs.mean(), ys.mean()]), len(xs)


def object_iou(result: np.ndarray, case: DragCase) -> float:
    """Mean over the moved objects of the IoU of the object's pixels (:func:`object_pixels`) in
    ``result`` and in the ground truth; 0 for a lost object."""
    ious = []
    for i in case.moved:
        a, b = object_pixels(result, case, i), object_pixels(case.ground_truth, case, i)
        ious.append(0.0 if is_lost(a, case, i) else float((a & b).sum() / max((a | b).sum(), 1)))
    return float(np.mean(ious))


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


def deformation_poses(result: np.ndarray, case: DragCase):
    """(input, ground truth, result) poses of a deformation case's object (:mod:`.pose`), each
    turned by the half turns that bring it nearest the one before (the ground truth's nearest the
    input's angle plus the case's own turn); the result's is None when the object is lost."""
    (i,) = case.moved
    A = case.transforms[0][:, :2]
    turn = math.atan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1])  # the rotation part of the map
    p_in = estimate_pose(object_pixels(case.image, case, i))
    p_gt = nearest_half_turn(estimate_pose(object_pixels(case.ground_truth, case, i)), p_in.angle + turn)
    found = object_pixels(result, case, i)
    p_res = None if is_lost(found, case, i) else estimate_pose(found)
    return p_in, p_gt, None if p_res is None else nearest_half_turn(p_res, p_gt.angle)


def deformation_scores(result: np.ndarray, case: DragCase) -> tuple[float, np.ndarray | None]:
    """(per-point error, shape oracle) of a deformation case.

    **Per-point error**: each handle taken by the map from the input's pose to the result's
    (:func:`gooddrag.shapes.pose.pose_map`) against where the map to the ground truth's pose takes
    it (both poses read by the same estimator, so its bias cancels and the ground truth scores
    exactly 0; that place lies within rasterisation error of the target), mean over the pairs,
    over the mean drag length: the input scores ~1. inf when the object is lost.
    **Shape oracle**: the ground truth with the object re-rendered at the result's pose (centre,
    angle and both axes moved by the result's difference from the ground truth's pose); None when
    lost."""
    p_in, p_gt, p_res = deformation_poses(result, case)
    if p_res is None:
        return math.inf, None
    drag = float(np.linalg.norm(case.target_points - case.handle_points, axis=1).mean())
    want = apply(pose_map(p_in, p_gt), case.handle_points)
    got = apply(pose_map(p_in, p_res), case.handle_points)
    point_error = float(np.linalg.norm(got - want, axis=1).mean() / drag)
    (i,) = case.moved
    obj = case.end_objects[i]
    grow = p_res.axes / p_gt.axes
    placed = dataclasses.replace(
        obj, center_xy=tuple(np.asarray(obj.center_xy) + p_res.center - p_gt.center),
        angle=obj.angle + p_res.angle - p_gt.angle, size=obj.size * grow[0],
        aspect=obj.aspect * grow[1] / grow[0], stripe_period=obj.stripe_period * grow[0], _patches={},
    )
    objects = list(case.end_objects)
    objects[i] = placed
    return point_error, compose(case.background, objects)


DEFORMATION_SUCCESS = 0.25
"""A deformation case succeeds when its per-point error is at most this fraction of the drag."""


def case_metrics(result: np.ndarray, case: DragCase, success_threshold_px: float | None = None) -> dict:
    """Scores of one result: ``position_error`` (px, mean over the moved objects' centroids; inf
    if one is lost), ``relative_error`` (translation kinds: that error over |d|; deformation kinds:
    the per-point error of :func:`deformation_scores`, a fraction of the mean
    drag length), ``n_lost``, ``success`` (translations: every moved object within the threshold;
    deformations: per-point error <= DEFORMATION_SUCCESS), ``iou`` (:func:`object_iou`),
    ``psnr_in_mask`` / ``l1_in_mask`` (vs the ground truth inside the mask), ``shape_psnr`` (vs the
    answer re-rendered where the result put the object) and ``psnr_outside_mask`` (vs the input
    outside it)."""
    thr = success_threshold(case.size) if success_threshold_px is None else float(success_threshold_px)
    err = position_error(result, case)
    common = {
        "position_error": float(err.mean()),
        "n_lost": int(np.isinf(err).sum()),
        "iou": object_iou(result, case),
        "psnr_in_mask": psnr(result, case.ground_truth, case.mask),
        "l1_in_mask": l1(result, case.ground_truth, case.mask),
        "psnr_outside_mask": psnr(result, case.image, ~case.mask),
    }
    if case.kind in DEFORMATION_KINDS:
        point_error, oracle = deformation_scores(result, case)
        return common | {
            "relative_error": point_error,
            "success": bool(point_error <= DEFORMATION_SUCCESS),
            "shape_psnr": math.nan if oracle is None else psnr(result, oracle, case.mask),
        }
    rel = err / np.linalg.norm(case.displacements, axis=1)
    return common | {
        "relative_error": float(rel.mean()),
        "success": bool(np.all(err < thr)),
        "shape_psnr": shape_psnr(result, case),
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
            "median_iou": float(np.median([r["iou"] for r in rs])) if all("iou" in r for r in rs) else math.nan,
        }
        if any("seconds" in r for r in rs):
            s["mean_seconds"] = float(np.mean([r["seconds"] for r in rs if "seconds" in r]))
        out[method] = s
    return out
