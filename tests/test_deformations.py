"""Deformation cases of the shapes benchmark (turn, scale, stretch) with their exact answers, the
pose read back from pixels, their metrics, and GoodDrag+'s deformation field (warp.py): answers
worked out by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gooddrag.core import warp
from gooddrag.shapes.metrics import case_metrics, deformation_poses
from gooddrag.shapes.pose import Pose, apply, estimate_pose, pose_map
from gooddrag.shapes.scenes import (
    DEFORMATION_KINDS,
    ShapeObject,
    deform,
    make_deformation_case,
)


def _pose_of(obj: ShapeObject, size: int = 64) -> Pose:
    return estimate_pose(obj.coverage(size) >= 0.5)


def _angle_gap(a: float, b: float) -> float:
    """Smallest difference of two axis angles (mod 180 degrees), radians."""
    d = (a - b) % math.pi
    return min(d, math.pi - d)


@pytest.fixture
def rectangle() -> ShapeObject:
    return ShapeObject(kind="rectangle", center_xy=(31.3, 30.6), size=24.0, angle=0.3, aspect=0.5)


def test_a_known_turn_gives_that_turn_back(rectangle):
    turned, A = deform(rectangle, "rotate", math.radians(35))
    before, after = _pose_of(rectangle), _pose_of(turned)
    assert _angle_gap(after.angle, before.angle + math.radians(35)) < math.radians(1.0)
    assert np.allclose(after.axes, before.axes, rtol=0.03)
    assert np.allclose(after.center, before.center, atol=0.05)
    assert np.allclose(A, [[math.cos(math.radians(35)), -math.sin(math.radians(35))],
                           [math.sin(math.radians(35)), math.cos(math.radians(35))]])


def test_a_known_scale_and_stretch_give_their_axes_back(rectangle):
    grown, A = deform(rectangle, "scale", 1.3)
    assert np.allclose(_pose_of(grown).axes / _pose_of(rectangle).axes, 1.3, rtol=0.03) and np.allclose(A, 1.3 * np.eye(2))
    stretched, A = deform(rectangle, "stretch", 1.4)
    ratio = _pose_of(stretched).axes / _pose_of(rectangle).axes
    assert ratio[0] == pytest.approx(1.4, rel=0.03) and ratio[1] == pytest.approx(1.0, rel=0.04)
    # the long axis (angle 0.3) is lengthened, the short one kept: A's eigenvectors are the axes
    u = np.array([math.cos(0.3), math.sin(0.3)])
    v = np.array([-math.sin(0.3), math.cos(0.3)])
    assert np.allclose(A @ u, 1.4 * u) and np.allclose(A @ v, v)


def test_pose_map_by_hand():
    start = Pose(np.array([0.0, 0.0]), 0.0, np.array([2.0, 1.0]))
    end = Pose(np.array([1.0, 2.0]), math.pi / 2, np.array([4.0, 1.0]))
    # A = R(90 deg) diag(2, 1) R(0)^T = [[0, -1], [2, 0]], b = end centre
    T = pose_map(start, end)
    assert np.allclose(T, [[0.0, -1.0, 1.0], [2.0, 0.0, 2.0]])
    assert np.allclose(apply(T, np.array([[1.0, 0.0], [0.0, 1.0]])), [[1.0, 4.0], [0.0, 2.0]])


@pytest.mark.parametrize("kind", DEFORMATION_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_deformation_cases_and_the_scores_of_a_perfect_answer(kind, seed):
    case = make_deformation_case(seed, 64, kind)
    (i,) = case.moved
    A, b = case.transforms[0][:, :2], case.transforms[0][:, 2]
    assert np.allclose(case.target_points, case.handle_points @ A.T + b)  # the object's own map
    assert np.array_equal(case.ground_truth[~case.mask], case.image[~case.mask])  # only the mask changes
    for x, y in np.concatenate([case.handle_points, case.target_points]):
        assert case.mask[int(y), int(x)]
    assert case.end_objects[i] is not case.objects[i] and case.objects[i].kind in ("ellipse", "rectangle", "diamond")
    perfect = case_metrics(case.ground_truth, case)
    assert perfect["iou"] == 1.0 and perfect["relative_error"] == 0.0 and perfect["success"]
    assert perfect["shape_psnr"] == math.inf and perfect["n_lost"] == 0
    # the answer's pose takes each handle to its target up to rasterisation
    p_in, p_gt, _ = deformation_poses(case.ground_truth, case)
    assert np.abs(apply(pose_map(p_in, p_gt), case.handle_points) - case.target_points).max() < 0.75
    nothing = case_metrics(case.image, case)  # doing nothing: the points stay where they were
    assert 0.75 < nothing["relative_error"] < 1.25 and not nothing["success"] and nothing["iou"] < 0.9


# -------------------------------------------------------- the deformation field (warp.py)
def test_pair_affine_by_hand():
    h = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(warp.pair_affine(h[:1], h[:1] + torch.tensor([3.0, -1.0])),
                          torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, -1.0]], dtype=torch.float64))
    # two pairs: the quarter turn about the origin (x, y) -> (-y, x), exactly
    two = warp.pair_affine(h[:2], torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(two, torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-12)
    # three pairs off one line: the affine map that stretches x by 1.5 and moves by (1, 2)
    A = torch.tensor([[1.5, 0.0], [0.0, 1.0]], dtype=torch.float64)
    three = warp.pair_affine(h, h @ A.T + torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(three, torch.tensor([[1.5, 0.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64), atol=1e-12)


def test_mask_regions_and_one_map_per_region():
    mask = torch.zeros((6, 8), dtype=torch.bool)
    mask[0:2, 0:3] = True
    mask[4:6, 5:8] = True
    labels = warp.mask_regions(mask)
    assert set(labels.unique().tolist()) == {0, 1, 2}
    assert (labels[0:2, 0:3] == labels[0, 0]).all() and (labels[4:6, 5:8] == labels[5, 7]).all()
    field = warp.affine_field(torch.tensor([[1.0, 1.0], [5.0, 6.0]]), torch.tensor([[1.0, 2.0], [4.0, 6.0]]), mask)
    assert torch.equal(field[0:2, 0:3], torch.tensor([0.0, 1.0], dtype=torch.float64).expand(2, 3, 2))
    assert torch.equal(field[4:6, 5:8], torch.tensor([-1.0, 0.0], dtype=torch.float64).expand(2, 3, 2))
    assert torch.equal(field[~mask], torch.zeros((int((~mask).sum()), 2), dtype=torch.float64))


def test_image_warp_turns_a_region_by_a_quarter_exactly():
    image = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5).expand(1, 3, 5, 5).contiguous()
    mask = torch.ones((5, 5), dtype=torch.bool)
    # (row, col) about (2, 2): (r, c) -> (2 + (c - 2), 2 - (r - 2)); two pairs fix the similarity
    handles = torch.tensor([[2.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    targets = torch.tensor([[4.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    out = warp.warp_image(image, warp.affine_field(handles, targets, mask), mask)
    # pixel p takes the image at T^-1(p): (r, c) <- (2 - (c - 2), 2 + (r - 2)) = (4 - c, r)
    expected = torch.tensor([[float(5 * (4 - c) + r) for c in range(5)] for r in range(5)])
    assert torch.allclose(out[0, 0], expected, atol=1e-4) and torch.equal(out[0, 0], out[0, 2])


def test_a_pixel_outside_the_mask_is_never_written():
    image = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros((6, 6), dtype=torch.bool)
    mask[1:4, 1:4] = True
    out = warp.warp_image(image, warp.affine_field(torch.tensor([[2.0, 2.0]]), torch.tensor([[3.0, 2.0]]), mask), mask)
    assert torch.equal(out[..., ~mask], image[..., ~mask])
    assert torch.allclose(out[0, :, 2, 2], image[0, :, 1, 2])  # moved one row down


def test_vacated_pixels_are_grown_in_from_around_the_mask_by_hand():
    image = torch.tensor([1.0, 9.0, 9.0, 9.0, 5.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5).contiguous()
    mask = torch.tensor([[False, True, True, True, False]])
    # round 1: x = 1 and x = 3 take the mean of their known neighbours (1 and 5); round 2: x = 2 of (1, 5)
    assert torch.equal(warp.fill_from_outside(image, mask)[0, 0, 0], torch.tensor([1.0, 1.0, 3.0, 5.0, 5.0]))


def test_what_a_move_uncovers_is_copied_from_behind_or_grown_in():
    """A move right by 2 inside the mask x 2..6: x 2, 3 take x 0, 1 (outside the mask; x 0 stands for
    another object) by default; with fill "around" they are grown in from the pixels next to the mask."""
    row = torch.tensor([3.0, 7.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0]).reshape(1, 1, 1, 8).expand(1, 3, 1, 8).contiguous()
    mask = torch.zeros((1, 8), dtype=torch.bool)
    mask[0, 2:7] = True
    field = warp.affine_field(torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 5.0]]), mask)
    out = warp.warp_image(row, field, mask, fill="around")[0, 0, 0]
    behind = warp.warp_image(row, field, mask)[0, 0, 0]
    assert torch.allclose(behind[2:4], torch.tensor([3.0, 7.0]), atol=1e-5)  # the default copies what lies behind
    assert torch.allclose(out[4:7], torch.tensor([0.0, 1.0, 2.0]), atol=1e-5)  # moved from x 2..4
    assert torch.allclose(out[2:4], torch.tensor([7.0, 7.0]))  # grown in from x = 1, never x = 0's 3
    assert out[0:2].tolist() == [3.0, 7.0] and out[7].item() == 0.0  # outside the mask: kept


def test_the_image_warp_at_stable_diffusion_size_takes_well_under_a_second_or_two():
    """512 x 512 working image, 64 x 64 latent mask: the regions are found on the latent grid."""
    import time

    from PIL import Image

    from gooddrag.methods.config import get_preset

    mask = torch.zeros((1, 1, 64, 64))
    mask[..., 10:30, 10:30] = 1
    mask[..., 40:60, 40:60] = 1
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    started = time.perf_counter()
    out, start = warp.image_warp_for_drag(image, torch.tensor([[150.0, 150.0], [400.0, 400.0]]),
                                          torch.tensor([[160.0, 150.0], [400.0, 380.0]]), mask, (256, 256),
                                          get_preset("gooddrag-plus"))
    assert time.perf_counter() - started < 5.0
    # each region moved by its own pair: the handles land on their targets (row, col supervision cells)
    assert torch.allclose(start, torch.tensor([[75.0, 80.0], [190.0, 200.0]], dtype=torch.float64))
    assert out.size == (512, 512)
