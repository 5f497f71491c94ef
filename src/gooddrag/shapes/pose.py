"""An object's pose read from its pixels, and the map between two poses (pure numpy).

Frames: (x, y) image pixels, x = column, y = row, pixel centres at integer coordinates.
A pose is the centre and the principal axes of the object's pixels (their second moments):
for the shapes a deformation case moves (ellipse, rectangle, diamond: centrally symmetric,
aspect < 1) it determines the object up to a half turn, which they do not show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    """``center`` (x, y) px; ``angle`` (radians) of the major axis from the +x axis (towards +y);
    ``axes`` (major, minor) standard deviations of the pixels along the two axes, px."""

    center: np.ndarray
    angle: float
    axes: np.ndarray

    def turned(self, half_turns: int) -> "Pose":
        return Pose(self.center, self.angle + half_turns * math.pi, self.axes)


def estimate_pose(pixels: np.ndarray) -> Pose | None:
    """The pose of a (H, W) bool array of an object's pixels; None for fewer than 3 pixels."""
    ys, xs = np.nonzero(pixels)
    if len(xs) < 3:
        return None
    pts = np.stack([xs, ys], axis=1).astype(np.float64)  # (n, 2) (x, y)
    center = pts.mean(axis=0)
    cov = np.cov((pts - center).T, bias=True)  # (2, 2)
    values, vectors = np.linalg.eigh(cov)  # ascending
    major = vectors[:, 1]
    return Pose(center, math.atan2(major[1], major[0]), np.sqrt(np.maximum(values[::-1], 1e-12)))


def nearest_half_turn(pose: Pose, angle: float) -> Pose:
    """``pose`` turned by the whole number of half turns that brings its angle nearest ``angle``
    (a half turn leaves these objects as they are)."""
    return pose.turned(round((angle - pose.angle) / math.pi))


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def pose_map(start: Pose, end: Pose) -> np.ndarray:
    """(2, 3) affine ``[A | b]`` of (x, y) px that takes ``start`` to ``end``: axes turned from
    ``start.angle`` to ``end.angle`` and each scaled by the ratio of the axes' lengths."""
    A = _rotation(end.angle) @ np.diag(end.axes / start.axes) @ _rotation(start.angle).T
    return np.concatenate([A, (end.center - A @ start.center)[:, None]], axis=1)


def apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) points through a (2, 3) affine."""
    return points @ affine[:, :2].T + affine[:, 2]
