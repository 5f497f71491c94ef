"""Synthetic scenes of flat shapes and drag cases with an exact ground truth.

Frames: points are ``(x, y)`` image pixels (x = column, y = row); pixel centres
sit at integer coordinates, so pixel ``(x, y)`` covers ``[x-0.5, x+0.5] x
[y-0.5, y+0.5]``. Everything is deterministic given a ``np.random.Generator``
(scenes) or an integer seed (cases).

A scene is a muted background (a gradient between two low-saturation colours
plus a faint low-frequency texture) with 1-3 non-overlapping objects in
saturated colours. Each object is rendered once into a small patch (4x4
supersampled coverage -> anti-aliased alpha, and a colour per pixel) and the
patch is *pasted* at integer offsets. Consequences:

- **Displacements are integers.** A drag case moves objects by an integer
  ``d = (dx, dy)``; the ground truth pastes the very same patch ``d`` further,
  so the moved coverage is the start coverage shifted by exactly ``d``, the
  coverage-weighted centroid moves by exactly ``d`` (up to float rounding of a
  sum, < 1e-9 px), and the ground truth equals the input bit for bit wherever
  no moved object covers a pixel (in particular everywhere outside the mask).
- ``ShapeObject.coverage`` also accepts a sub-pixel translation; it then
  re-renders the patch at the new fractional position (not used by cases).

Colours: background colours have saturation <= 0.3 and value in [0.2, 0.55];
object colours have saturation >= 0.8 and value >= 0.85 (a striped object's
second tone is the same hue, less saturated and bright). Every palette colour
is at least ``MIN_COLOUR_DISTANCE`` (120, Euclidean RGB on 0..255) from every
background pixel and from every colour of every other object, and object hues
are at least 50 degrees apart; the metrics rely on this to segment objects by
colour.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

SHAPE_KINDS = ("disc", "square", "triangle", "ellipse", "rectangle", "diamond")
TEXTURES = ("solid", "stripes")
CASE_KINDS = ("single", "multi_point", "multi_object")
"""Translation kinds: whole objects moved by integer vectors."""
DEFORMATION_KINDS = ("rotate", "scale", "stretch")
"""Deformation kinds: one object turned, grown/shrunk, or lengthened/shortened along one axis
about its centre (:func:`make_deformation_case`)."""
ALL_KINDS = CASE_KINDS + DEFORMATION_KINDS
DEFORMABLE_SHAPES = ("ellipse", "rectangle", "diamond")
"""Shapes a deformation case moves: centrally symmetric with aspect < 1, so their pose (centre,
angle mod 180 degrees, both axes) can be read back from their pixels' second moments."""
ROTATE_DEGREES = (15.0, 45.0)      # |turn|, either direction
SCALE_RANGES = ((0.7, 0.85), (1.2, 1.45))     # factor, shrunk or grown
STRETCH_RANGES = ((0.7, 0.85), (1.2, 1.45))   # factor along the long axis; the short axis is kept
HANDLE_REACH = 0.8                 # handles on the long axis at +-0.8 of the half-length
DEFORMATION_SIZE_RANGE = (0.30, 0.42)  # larger objects than the translation kinds': drags of 2-6 px

SUPERSAMPLE = 4                  # coverage = mean of SUPERSAMPLE x SUPERSAMPLE samples per pixel
SIZE_RANGE = (0.18, 0.30)        # object size as a fraction of the image side
DISPLACEMENT_RANGE = (0.10, 0.25)  # |d| as a fraction of the image side
MIN_COLOUR_DISTANCE = 120.0      # RGB distance between palettes, and palette <-> background
MIN_HUE_GAP = 50.0 / 360.0       # between the hues of two objects
GAP_PX = 2                       # objects' supports are more than GAP_PX apart
BORDER_PX = 2                    # empty rows/columns kept between an object and the image border


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def mask_margin(size: int) -> int:
    """Dilation (px) of the moved objects' coverage that makes a case's mask."""
    return max(2, int(round(0.05 * size)))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a (H, W) bool array by a disc: a pixel is set when some set
    pixel lies within Euclidean distance ``radius`` (pixel centres)."""
    r = int(radius)
    if r <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= r * r:
                out |= padded[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


@dataclass(eq=False)
class ShapeObject:
    """One flat shape. ``size`` is its main dimension in px: disc diameter, square
    or triangle side, long axis of ellipse / rectangle / diamond (``aspect`` = short
    / long). ``angle`` (radians) rotates the shape's axes in the image frame.
    ``palette`` holds 1 colour ("solid") or 2 ("stripes": bands of period
    ``stripe_period`` px across direction ``stripe_angle`` in the shape's frame;
    each pixel takes the tone of the band at its centre)."""

    kind: str
    center_xy: tuple[float, float]
    size: float
    angle: float = 0.0
    palette: tuple[tuple[int, int, int], ...] = ((255, 0, 0),)
    texture: str = "solid"
    aspect: float = 1.0
    stripe_period: float = 4.0
    stripe_angle: float = 0.0
    stripe_phase: float = 0.0
    _patches: dict = field(default_factory=dict, repr=False, compare=False)

    # -- geometry -------------------------------------------------------------
    @property
    def circumradius(self) -> float:
        s, q = self.size, self.aspect
        if self.kind in ("disc", "ellipse", "diamond"):
            return s / 2
        if self.kind == "square":
            return s / math.sqrt(2)
        if self.kind == "rectangle":
            return 0.5 * s * math.hypot(1.0, q)
        if self.kind == "triangle":
            return s / math.sqrt(3)
        raise ValueError(f"unknown shape kind {self.kind!r}")

    def _inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Membership of points given in the shape's own frame (u along its long axis)."""
        a = self.size / 2
        b = a * self.aspect
        k = self.kind
        if k == "disc":
            return u * u + v * v <= a * a
        if k in ("square", "rectangle"):
            return (np.abs(u) <= a) & (np.abs(v) <= (a if k == "square" else b))
        if k == "ellipse":
            return (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if k == "diamond":
            return np.abs(u) / a + np.abs(v) / b <= 1.0
        if k == "triangle":  # equilateral, inradius side / (2 sqrt 3)
            rho = self.size / (2 * math.sqrt(3))
            out = np.ones(np.broadcast(u, v).shape, dtype=bool)
            for t in (0.5 * math.pi, 0.5 * math.pi + 2 * math.pi / 3, 0.5 * math.pi + 4 * math.pi / 3):
                out &= u * math.cos(t) + v * math.sin(t) <= rho
            return out
        raise ValueError(f"unknown shape kind {k!r}")

    # -- rendering ------------------------------------------------------------
    def _patch(self, frac: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """(alpha (n, n), colour (n, n, 3)) on pixels ``base - R .. base + R`` where the
        centre is ``base + frac``; cached per fractional position."""
        key = (float(frac[0]), float(frac[1]))
        if key in self._patches:
            return self._patches[key]
        R = int(math.ceil(self.circumradius)) + 2
        n = 2 * R + 1
        ss = SUPERSAMPLE
        sub = (np.arange(ss) + 0.5) / ss - 0.5
        t = (np.arange(n)[:, None] - R + sub[None, :]).ravel()
        c, s = math.cos(self.angle), math.sin(self.angle)
        X, Y = (t - key[0])[None, :], (t - key[1])[:, None]
        inside = self._inside(c * X + s * Y, -s * X + c * Y)
        alpha = inside.reshape(n, ss, n, ss).mean(axis=(1, 3))
        p = np.arange(n) - R
        X, Y = (p - key[0])[None, :], (p - key[1])[:, None]
        pal = np.asarray(self.palette, dtype=np.float64)
        if self.texture == "stripes" and len(pal) > 1:
            u, v = c * X + s * Y, -s * X + c * Y
            w = u * math.cos(self.stripe_angle) + v * math.sin(self.stripe_angle)
            idx = np.floor(w / self.stripe_period + self.stripe_phase).astype(np.int64) % 2
            colour = pal[idx]
        else:
            colour = np.broadcast_to(pal[0], (n, n, 3)).copy()
        self._patches[key] = (alpha, colour)
        return alpha, colour

    def placed(self, shift=(0, 0)) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(x0, y0, alpha, colour): the patch and its top-left pixel after translating
        the object by ``shift`` = (dx, dy) px. Integer shifts reuse the same patch."""
        cx, cy = self.center_xy
        bx, by = math.floor(cx), math.floor(cy)
        fx, fy = cx - bx, cy - by
        sx, sy = float(shift[0]), float(shift[1])
        ix, iy = math.floor(sx), math.floor(sy)
        rx, ry = sx - ix, sy - iy
        if rx or ry:  # sub-pixel translation: new fractional centre, carry into the integer part
            fx, fy = fx + rx, fy + ry
            ix, fx = ix + math.floor(fx), fx - math.floor(fx)
            iy, fy = iy + math.floor(fy), fy - math.floor(fy)
        alpha, colour = self._patch((fx, fy))
        R = (alpha.shape[0] - 1) // 2
        return bx + ix - R, by + iy - R, alpha, colour

    def coverage(self, size: int, shift=(0, 0)) -> np.ndarray:
        """Anti-aliased coverage (alpha in [0, 1]) on a ``size`` x ``size`` image, the
        object translated by ``shift`` = (dx, dy) px (any real numbers; integers are exact
        translates of ``shift=(0, 0)``)."""
        out = np.zeros((size, size), dtype=np.float64)
        x0, y0, alpha, _ = self.placed(shift)
        dst, src = _clip(x0, y0, alpha.shape[0], size)
        if dst is not None:
            out[dst] = alpha[src]
        return out

    @property
    def area(self) -> float:
        """Sum of the coverage (px), independent of integer translations."""
        return float(self.placed()[2].sum())


def _clip(x0: int, y0: int, n: int, size: int):
    """Slices (image, patch) of an n x n patch at top-left (x0, y0) clipped to the image."""
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + n, size), min(y0 + n, size)
    if xa >= xb or ya >= yb:
        return None, None
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


def compose(background: np.ndarray, objects, shifts=None) -> np.ndarray:
    """Paint ``objects`` in order over a uint8 ``background`` (alpha blending in float,
    then rounding); ``shifts`` maps object index -> (dx, dy) translation."""
    shifts = shifts or {}
    canvas = background.astype(np.float64)
    size = canvas.shape[0]
    for i, obj in enumerate(objects):
        x0, y0, alpha, colour = obj.placed(shifts.get(i, (0, 0)))
        dst, src = _clip(x0, y0, alpha.shape[0], size)
        if dst is None:
            continue
        a = alpha[src][..., None]
        canvas[dst] = canvas[dst] * (1.0 - a) + colour[src] * a
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


@dataclass(eq=False)
class Scene:
    """``image`` (H, W, 3) uint8 = ``background`` (H, W, 3) uint8 with ``objects`` painted."""

    image: np.ndarray
    background: np.ndarray
    objects: list[ShapeObject]
    size: int


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two muted colours in a random direction + faint sinusoids."""
    cols = []
    for _ in range(2):
        cols.append(np.array(_rgb(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.2, 0.55)), float))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    th = rng.uniform(0, 2 * math.pi)
    p = xx * math.cos(th) + yy * math.sin(th)
    t = (p - p.min()) / max(p.max() - p.min(), 1e-9)
    bg = cols[0] + (cols[1] - cols[0]) * t[..., None]
    tex = np.zeros((size, size))
    for _ in range(3):  # low frequency: 0.5 - 2.5 cycles per image side, +-1.5..3.5 levels each
        f, phi, psi = rng.uniform(0.5, 2.5), rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
        tex += rng.uniform(1.5, 3.5) * np.sin(2 * math.pi * f * (xx * math.cos(phi) + yy * math.sin(phi)) / size + psi)
    tint = rng.uniform(0.8, 1.2, size=3)
    return np.clip(np.rint(bg + tex[..., None] * tint), 0, 255).astype(np.uint8)


def _palette(rng, texture, bg_colours, others, other_hues):
    """A palette (1 or 2 colours) and hue far from the background and from other objects."""
    for _ in range(200):
        h = rng.uniform()
        if any(min(abs(h - o), 1 - abs(h - o)) < MIN_HUE_GAP for o in other_hues):
            continue
        s, v = rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0)
        pal = [_rgb(h, s, v)]
        if texture == "stripes":
            pal.append(_rgb(h, s * rng.uniform(0.3, 0.5), 1.0))
            if np.linalg.norm(np.subtract(pal[0], pal[1])) < 60:
                continue
        p = np.asarray(pal, float)
        if np.sqrt(((bg_colours[None] - p[:, None]) ** 2).sum(-1)).min() < MIN_COLOUR_DISTANCE:
            continue
        if others and np.sqrt(((np.asarray(others, float)[None] - p[:, None]) ** 2).sum(-1)).min() < MIN_COLOUR_DISTANCE:
            continue
        return tuple(pal), h
    return None, None


def _support_ok(support: np.ndarray, blocked: np.ndarray) -> bool:
    """Support inside the image with BORDER_PX empty px, and more than GAP_PX from ``blocked``."""
    size = support.shape[0]
    rows, cols = np.any(support, axis=1), np.any(support, axis=0)
    if not rows.any():
        return False
    b = BORDER_PX
    if rows[:b].any() or rows[size - b:].any() or cols[:b].any() or cols[size - b:].any():
        return False
    return not (dilate(support, GAP_PX) & blocked).any()


def random_scene(rng: np.random.Generator, size: int = 64, n_objects: int | None = None,
                 size_range: tuple[float, float] = SIZE_RANGE) -> Scene:
    """A random scene: muted background and ``n_objects`` (1..3 at random when None)
    non-overlapping shapes of size ``size_range`` (18-30 %) of ``size``, solid or striped."""
    for _ in range(100):
        n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
        background = _background(rng, size)
        bg_colours = np.unique(background.reshape(-1, 3), axis=0).astype(np.float64)
        objects: list[ShapeObject] = []
        occupied = np.zeros((size, size), dtype=bool)
        colours, hues = [], []
        for _ in range(n):
            kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
            texture = TEXTURES[rng.integers(len(TEXTURES))]
            palette, hue = _palette(rng, texture, bg_colours, colours, hues)
            if palette is None:
                break
            obj_size = rng.uniform(*size_range) * size
            obj = ShapeObject(
                kind=kind, center_xy=(0.0, 0.0), size=float(obj_size),
                angle=float(rng.uniform(0, 2 * math.pi)) if kind != "disc" else 0.0,
                palette=palette, texture=texture,
                aspect=float(rng.uniform(0.5, 0.75)) if kind in ("ellipse", "rectangle") else
                float(rng.uniform(0.6, 0.85)) if kind == "diamond" else 1.0,
                stripe_period=float(rng.uniform(0.3, 0.45) * obj_size),
                stripe_angle=float(rng.uniform(0, math.pi)), stripe_phase=float(rng.uniform()),
            )
            lo = obj.circumradius + BORDER_PX
            if size - 1 - lo < lo:
                break
            for _ in range(100):
                obj.center_xy = (float(rng.uniform(lo, size - 1 - lo)), float(rng.uniform(lo, size - 1 - lo)))
                obj._patches.clear()
                support = obj.coverage(size) > 0
                if _support_ok(support, occupied):
                    break
            else:
                break
            objects.append(obj)
            occupied |= support
            colours.extend(palette)
            hues.append(hue)
        if len(objects) == n:
            return Scene(image=compose(background, objects), background=background, objects=objects, size=size)
    raise RuntimeError(f"could not place {n_objects} objects on a {size}x{size} image")


@dataclass(eq=False)
class DragCase:
    """One drag problem with its exact answer.

    ``image`` is the input, ``ground_truth`` the same scene with the objects
    ``moved`` translated by ``displacements`` (integer (dx, dy) px, one per moved
    object), ``mask`` (True = may change) their start and end coverage dilated by
    ``mask_margin(size)`` px. ``handle_points`` / ``target_points`` are (N, 2)
    float (x, y); pair j belongs to object ``point_objects[j]`` and target = handle
    + its object's displacement. Per moved object: coverage-weighted centroid at
    start and end (x, y; end = start + d) and area (sum of coverage, px)."""

    seed: int
    kind: str
    size: int
    image: np.ndarray
    ground_truth: np.ndarray
    mask: np.ndarray
    handle_points: np.ndarray
    target_points: np.ndarray
    displacements: np.ndarray
    moved: tuple[int, ...]
    objects: list[ShapeObject]
    start_centroids: np.ndarray
    end_centroids: np.ndarray
    areas: np.ndarray
    point_objects: np.ndarray
    background: np.ndarray
    transforms: np.ndarray | None = None
    """Per moved object, the (2, 3) affine map ``[A | b]`` of (x, y) px that takes the input's
    object to the ground truth's: ``x' = A x + b`` (a translation ``[I | d]`` for the translation
    kinds). Every target is ``A handle + b`` of its object's map."""
    end_objects: list[ShapeObject] | None = None
    """The objects as the ground truth draws them (the moved ones at their new pose)."""


def _draw_displacement(rng: np.random.Generator, size: int) -> tuple[int, int]:
    lo, hi = DISPLACEMENT_RANGE[0] * size, DISPLACEMENT_RANGE[1] * size
    while True:
        r, th = rng.uniform(lo, hi), rng.uniform(0, 2 * math.pi)
        d = (int(round(r * math.cos(th))), int(round(r * math.sin(th))))
        if lo <= math.hypot(*d) <= hi:
            return d


def _centroid(alpha: np.ndarray) -> np.ndarray:
    yy, xx = np.indices(alpha.shape)
    m = alpha.sum()
    return np.array([(alpha * xx).sum() / m, (alpha * yy).sum() / m])


def _pick_handles(rng, alpha: np.ndarray, obj: ShapeObject, n: int) -> np.ndarray:
    """``n`` distinct fully covered pixels (x, y): one = near the centroid, several =
    spread out (pairwise >= max(2, 0.2 size) px when possible)."""
    ys, xs = np.nonzero(alpha >= 1.0)
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    c = _centroid(alpha)
    if n == 1:
        near = np.linalg.norm(pts - c, axis=1)
        cand = pts[near <= max(1.5, 0.15 * obj.size)]
        if len(cand) == 0:
            cand = pts[[np.argmin(near)]]
        return cand[[rng.integers(len(cand))]]
    for sep in (max(2.0, 0.2 * obj.size), 2.0, 1.0):
        chosen = []
        for j in rng.permutation(len(pts)):
            if all(np.linalg.norm(pts[j] - pts[k]) >= sep for k in chosen):
                chosen.append(j)
                if len(chosen) == n:
                    return pts[chosen]
    raise RuntimeError("object too small for the requested handles")


def make_case(seed: int, size: int = 64, kind: str = "single") -> DragCase:
    """A drag case of ``kind`` ("single": one pair on one object; "multi_point": 2-3
    pairs on one object, same displacement; "multi_object": 2 objects, each with its
    own displacement and one pair). Displacements are integer vectors with |d| in
    [0.10, 0.25] * size (drawn uniform in length and direction, then rounded); each
    moved object ends whole inside the image (>= 2 px border) and more than 2 px from
    every other object and from the other moved object's start and end."""
    if kind not in CASE_KINDS:
        raise ValueError(f"kind must be one of {CASE_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    n_move = 2 if kind == "multi_object" else 1
    for _ in range(200):
        scene = random_scene(rng, size, int(rng.integers(2, 4)) if n_move == 2 else None)
        objs = scene.objects
        supports = [o.coverage(size) > 0 for o in objs]
        for _ in range(50):
            moved = [int(i) for i in rng.choice(len(objs), n_move, replace=False)]
            ds = [_draw_displacement(rng, size) for _ in moved]
            ends = [objs[i].coverage(size, d) > 0 for i, d in zip(moved, ds)]
            ok = True
            for k, i in enumerate(moved):
                blocked = np.zeros((size, size), dtype=bool)
                for j, sup in enumerate(supports):
                    if j != i:
                        blocked |= sup
                for k2 in range(len(moved)):
                    if k2 != k:
                        blocked |= ends[k2]
                if not _support_ok(ends[k], blocked):
                    ok = False
                    break
            if ok:
                break
        else:
            continue
        shifts = dict(zip(moved, ds))
        gt = compose(scene.background, objs, shifts)
        mask = np.zeros((size, size), dtype=bool)
        handles, targets, owners, c0, c1, areas = [], [], [], [], [], []
        for i, d in shifts.items():
            a0, a1 = objs[i].coverage(size), objs[i].coverage(size, d)
            mask |= (a0 > 0) | (a1 > 0)
            n_pts = int(rng.integers(2, 4)) if kind == "multi_point" else 1
            h = _pick_handles(rng, a0, objs[i], n_pts)
            handles.append(h)
            targets.append(h + np.asarray(d, dtype=np.float64))
            owners += [i] * len(h)
            c0.append(_centroid(a0))
            c1.append(_centroid(a1))
            areas.append(a0.sum())
        return DragCase(
            seed=int(seed), kind=kind, size=size, image=scene.image, ground_truth=gt,
            mask=dilate(mask, mask_margin(size)),
            handle_points=np.concatenate(handles), target_points=np.concatenate(targets),
            displacements=np.asarray(ds, dtype=np.float64), moved=tuple(moved), objects=objs,
            start_centroids=np.asarray(c0), end_centroids=np.asarray(c1), areas=np.asarray(areas),
            point_objects=np.asarray(owners, dtype=np.int64), background=scene.background,
            transforms=np.asarray([[[1.0, 0.0, d[0]], [0.0, 1.0, d[1]]] for d in ds]),
        )
    raise RuntimeError(f"no valid {kind} case for seed {seed} at size {size}")


def _rotation(theta: float) -> np.ndarray:
    """(2, 2) rotation of (x, y) offsets by ``theta`` radians (y points down, so a positive
    angle turns clockwise on screen, as :class:`ShapeObject`'s ``angle`` does)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def deform(obj: ShapeObject, kind: str, amount: float) -> tuple[ShapeObject, np.ndarray]:
    """``obj`` turned (``kind="rotate"``, ``amount`` radians), scaled (``"scale"``, factor) or
    stretched along its long axis (``"stretch"``, factor; the short axis keeps its length) about
    its centre, and the (2, 2) linear part ``A`` of that map of (x, y) offsets from the centre.
    The new object is drawn exactly as ``A`` takes the old one, its stripes included."""
    e = dict(kind=obj.kind, center_xy=obj.center_xy, size=obj.size, angle=obj.angle, palette=obj.palette,
             texture=obj.texture, aspect=obj.aspect, stripe_period=obj.stripe_period,
             stripe_angle=obj.stripe_angle, stripe_phase=obj.stripe_phase)
    if kind == "rotate":
        e["angle"] = obj.angle + amount
        A = _rotation(amount)
    elif kind == "scale":
        e["size"], e["stripe_period"] = obj.size * amount, obj.stripe_period * amount
        A = amount * np.eye(2)
    elif kind == "stretch":
        # shape frame (u, v) -> (k u, v): a stripe coordinate w = u cos b + v sin b becomes
        # (u'/k) cos b + v' sin b, i.e. direction (cos b / k, sin b) of norm n: angle and period / n
        b = obj.stripe_angle
        n = math.hypot(math.cos(b) / amount, math.sin(b))
        e["size"], e["aspect"] = obj.size * amount, obj.aspect / amount
        e["stripe_angle"], e["stripe_period"] = math.atan2(math.sin(b), math.cos(b) / amount), obj.stripe_period / n
        R = _rotation(obj.angle)
        A = R @ np.diag([amount, 1.0]) @ R.T
    else:
        raise ValueError(f"kind must be one of {DEFORMATION_KINDS}, got {kind!r}")
    return ShapeObject(**e), A


def _draw_amount(rng: np.random.Generator, kind: str) -> float:
    if kind == "rotate":
        return math.radians(rng.uniform(*ROTATE_DEGREES)) * (1 if rng.uniform() < 0.5 else -1)
    lo, hi = (SCALE_RANGES if kind == "scale" else STRETCH_RANGES)[int(rng.integers(2))]
    return float(rng.uniform(lo, hi))


def _deformation_handles(obj: ShapeObject, kind: str, n_pairs: int) -> np.ndarray:
    """(n, 2) (x, y) handles in ``obj``: the two ends of its long axis at HANDLE_REACH of the
    half-length, and for a third pair a point off that axis (on the short axis for a turn or a
    scale; inside a quadrant for a stretch, where the short axis does not move)."""
    a = obj.size / 2
    b = a * obj.aspect
    local = [(HANDLE_REACH * a, 0.0), (-HANDLE_REACH * a, 0.0)]
    if n_pairs == 3:
        local.append((0.0, HANDLE_REACH * b) if kind != "stretch" else (0.4 * a, 0.45 * b))
    R = _rotation(obj.angle)
    return np.asarray([np.asarray(obj.center_xy) + R @ np.asarray(p) for p in local])


def make_deformation_case(seed: int, size: int = 64, kind: str = "rotate") -> DragCase:
    """A deformation case: one ellipse, rectangle or diamond (30-42 % of the image side) of a
    random scene of 1-2 objects turned by 15-45
    degrees, scaled by 0.7-0.85 or 1.2-1.45, or stretched along its long axis by the same factors
    (its aspect changes), about its centre. 2 or 3 pairs (3 for a stretch, which 2 pairs on one
    axis cannot tell from a scale): handles on the object (:func:`_deformation_handles`), each
    target where the object's own map takes its handle. The ground truth re-renders the object at
    its new pose; it ends whole inside the image and more than 2 px from every other object; the
    mask is its start and end coverage dilated as for the translation kinds. ``displacements``
    holds the centroid's move (0 up to float rounding: the map keeps the centre)."""
    if kind not in DEFORMATION_KINDS:
        raise ValueError(f"kind must be one of {DEFORMATION_KINDS}, got {kind!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), DEFORMATION_KINDS.index(kind) + 1]))
    for _ in range(500):
        scene = random_scene(rng, size, int(rng.integers(1, 3)), size_range=DEFORMATION_SIZE_RANGE)
        objs = scene.objects
        choices = [i for i, o in enumerate(objs) if o.kind in DEFORMABLE_SHAPES]
        if not choices:
            continue
        i = int(choices[rng.integers(len(choices))])
        amount = _draw_amount(rng, kind)
        new, A = deform(objs[i], kind, amount)
        if kind == "stretch" and not new.aspect < 0.9:  # the long axis must stay the long one
            continue
        blocked = np.zeros((size, size), dtype=bool)
        for j, o in enumerate(objs):
            if j != i:
                blocked |= o.coverage(size) > 0
        a0, a1 = objs[i].coverage(size), new.coverage(size)
        if not _support_ok(a1 > 0, blocked):
            continue
        handles = _deformation_handles(objs[i], kind, 3 if kind == "stretch" else int(rng.integers(2, 4)))
        c = np.asarray(objs[i].center_xy)
        b = c - A @ c
        targets = handles @ A.T + b
        if np.linalg.norm(targets - handles, axis=1).min() < 0.5:
            continue
        end_objects = list(objs)
        end_objects[i] = new
        return DragCase(
            seed=int(seed), kind=kind, size=size, image=scene.image,
            ground_truth=compose(scene.background, end_objects),
            mask=dilate((a0 > 0) | (a1 > 0), mask_margin(size)),
            handle_points=handles, target_points=targets,
            displacements=(_centroid(a1) - _centroid(a0))[None], moved=(i,), objects=objs,
            start_centroids=_centroid(a0)[None], end_centroids=_centroid(a1)[None], areas=np.asarray([a0.sum()]),
            point_objects=np.full(len(handles), i, dtype=np.int64), background=scene.background,
            transforms=np.concatenate([A, b[:, None]], axis=1)[None], end_objects=end_objects,
        )
    raise RuntimeError(f"no valid {kind} case for seed {seed} at size {size}")


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a set made from master ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def make_any_case(seed: int, size: int = 64, kind: str = "single") -> DragCase:
    """The case of any kind of :data:`ALL_KINDS` (translation or deformation) made from ``seed``."""
    if kind in DEFORMATION_KINDS:
        return make_deformation_case(seed, size, kind)
    return make_case(seed, size, kind)


def make_benchmark_cases(n: int, seed: int, kinds=ALL_KINDS, per_kind: int = 10, size: int = 64) -> list[DragCase]:
    """The shapes benchmark's cases: the ``n`` translation cases of :func:`make_cases` (the same
    ones whatever else is asked) whose kind is in ``kinds``, then ``per_kind`` cases of each
    deformation kind in ``kinds``, case i of kind k made from ``case_seed(seed, 1000 * (j + 1) + i)``
    (j = k's index in :data:`DEFORMATION_KINDS`)."""
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise ValueError(f"unknown case kind(s) {unknown}; choose from {ALL_KINDS}")
    cases = [c for c in make_cases(n, seed, size) if c.kind in kinds] if any(k in CASE_KINDS for k in kinds) else []
    for j, kind in enumerate(DEFORMATION_KINDS):
        if kind in kinds:
            cases += [make_deformation_case(case_seed(seed, 1000 * (j + 1) + i), size, kind) for i in range(per_kind)]
    return cases


def make_cases(n: int, seed: int, size: int = 64, kinds=CASE_KINDS, weights=(0.6, 0.2, 0.2)) -> list[DragCase]:
    """``n`` cases from one master ``seed``: case i has seed ``case_seed(seed, i)`` and a
    kind drawn with ``weights`` (so ``make_case(c.seed, size, c.kind)`` remakes it)."""
    p = np.asarray(weights, dtype=np.float64)
    if len(p) != len(kinds):
        raise ValueError(f"{len(kinds)} kinds but {len(p)} weights")
    p = p / p.sum()
    picks = np.random.default_rng(np.random.SeedSequence([int(seed), 2**31 - 1])).choice(len(kinds), size=n, p=p)
    return [make_case(case_seed(seed, i), size, kinds[k]) for i, k in enumerate(picks)]
