"""Exact tests of the motion-supervision math with answers worked out by hand.

Frames: points are (row, col) supervision cells; feature maps (1, C, h, w).
"""

import pytest
import torch

from gooddrag.core.motion import (
    active_pairs,
    background_loss,
    dragdiffusion_motion_loss,
    gooddrag_motion_loss,
    patch_offsets,
    sample_patches,
    step_towards,
)
from gooddrag.core.tracking import features_at, track_points


def ramp(h=8, w=8, channels=1):
    """F[c, r, col] = col: a map whose bilinear samples are known exactly."""
    return torch.arange(w, dtype=torch.float32).repeat(h, 1)[None, None].repeat(1, channels, 1, 1)


def test_patch_offsets_are_the_centred_square():
    assert patch_offsets(1).tolist() == [
        [-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1]
    ]
    # GoodDrag's r1 = 4: the authors' slice [int(h) - 4, int(h) + 4 + 1) has 9 x 9 = 81 cells
    off = patch_offsets(4)
    assert off.shape == (81, 2)
    assert off.min().item() == -4 and off.max().item() == 4 and off[40].tolist() == [0, 0]


def test_bilinear_sampling_at_fractional_positions():
    f = torch.tensor([[0.0, 1.0], [2.0, 4.0]])[None, None]  # (1, 1, 2, 2)
    one = torch.zeros(1, 2)
    pts = torch.tensor([[0.5, 0.5], [0.25, 0.5], [0.0, 1.0], [1.0, 0.75]])
    out = sample_patches(f, pts, one)[:, 0, 0]
    # (0.5,0.5): mean of all four = 1.75; (0.25,0.5): top 0.5, bottom 3 -> 0.5 + 0.25*2.5 = 1.125;
    # (0,1): the cell itself = 1; (1,0.75): 2 + 0.75*(4-2) = 3.5
    assert out.tolist() == pytest.approx([1.75, 1.125, 1.0, 3.5])


def test_sampling_at_integer_positions_equals_indexing():
    torch.manual_seed(0)
    f = torch.randn(1, 3, 6, 7)
    pts = torch.tensor([[2.0, 3.0], [5.0, 0.0]])
    patches = sample_patches(f, pts, patch_offsets(1))  # (N, C, 9)
    expected0 = f[0, :, 1:4, 2:5].reshape(3, 9)
    assert torch.equal(patches[0], expected0)  # exactly: the authors take integer slices
    assert torch.allclose(features_at(f, pts), f[0][:, [2, 5], [3, 0]].T)


def test_step_towards_is_unit_direction_times_min_beta_distance():
    h = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    g = torch.tensor([[3.0, 4.0], [1.0, 2.0], [5.0, 5.0]])
    out = step_towards(h, g, beta=4.0)
    # |g-h| = 5 -> 4 * (0.6, 0.8); |g-h| = 1 < beta -> lands on g; g == h -> stays
    assert out.tolist() == [pytest.approx([2.4, 3.2]), pytest.approx([1.0, 2.0]), [5.0, 5.0]]
    assert step_towards(h[:1], g[:1], beta=1.0).tolist() == [pytest.approx([0.6, 0.8])]


def test_active_pairs_skip_those_within_stop_distance():
    h = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    g = torch.tensor([[0.0, 1.9], [0.0, 2.0], [3.0, 4.0]])
    assert active_pairs(h, g, 2.0).tolist() == [False, True, True]


def test_gooddrag_loss_compares_with_the_original_patch():
    f = ramp()
    h0 = torch.tensor([[2.0, 2.0]])
    reference = sample_patches(f, h0, patch_offsets(1))  # 3x3 patch, cols 1, 2, 3
    target = torch.tensor([[2.0, 6.0]])
    # beta 4: patch moves to (2, 6) -> cols 5, 6, 7; |diff| = 4 in all 9 cells; weight (2*r1)^2 = 4
    # (not the 9 cells): 4 * mean 4 = 16
    assert gooddrag_motion_loss(f, reference, h0, target, r1=1, beta=4.0).item() == pytest.approx(16.0)
    # beta 2: patch at (2, 4) -> cols 3..5; |diff| = 2 -> 8
    assert gooddrag_motion_loss(f, reference, h0, target, r1=1, beta=2.0).item() == pytest.approx(8.0)
    # the tracked handle has moved to (2, 3) but the reference stays the ORIGINAL patch:
    # step 2 -> (2, 5) -> cols 4..6; |diff| = 3 -> 12
    assert gooddrag_motion_loss(f, reference, torch.tensor([[2.0, 3.0]]), target, r1=1, beta=2.0).item() == pytest.approx(12.0)


def test_gooddrag_loss_on_the_81_cell_patch_with_weight_64():
    # r1 = 4 on a 16 x 16 map F[c, r, col] = col + 100 r: the centred patch around (8, 8) has
    # rows 4..12 and cols 4..12 (81 cells); a fractional step of 2.5 columns moves every cell's
    # value by exactly 2.5 (the map is linear), so mean |diff| = 2.5 and L = 64 * 2.5 = 160.
    f = (torch.arange(16.0)[None, :] + 100 * torch.arange(16.0)[:, None])[None, None]
    h0 = torch.tensor([[8.0, 8.0]])
    reference = sample_patches(f, h0, patch_offsets(4))
    assert reference.shape == (1, 1, 81)
    assert torch.equal(reference[0, 0], f[0, 0, 4:13, 4:13].reshape(-1))  # the authors' integer slice
    target = torch.tensor([[8.0, 10.5]])
    assert gooddrag_motion_loss(f, reference, h0, target, r1=4, beta=4.0).item() == pytest.approx(160.0)
    # a half-open 8x8 patch (rows/cols 4..11) would give the same here; an off-centre patch does
    # not match a centred reference: cells shifted by half a row cost 50 each
    half_open = sample_patches(f, h0 - 0.5, patch_offsets(4))
    assert (half_open - reference).abs().mean().item() == pytest.approx(50.5)


def test_dragdiffusion_loss_compares_with_the_current_patch():
    f = ramp()
    target = torch.tensor([[2.0, 6.0]])
    # unit step: (2,2)->(2,3); 3x3 patch cols 1..3 vs 2..4: |diff| = 1 -> 9 cells * 1
    assert dragdiffusion_motion_loss(f, None, torch.tensor([[2.0, 2.0]]), target, r1=1).item() == pytest.approx(9.0)
    # from a moved handle the reference moves with it: the loss is the same
    assert dragdiffusion_motion_loss(f, None, torch.tensor([[2.0, 3.0]]), target, r1=1).item() == pytest.approx(9.0)


def test_losses_skip_pairs_near_target_and_sum_over_pairs():
    f = ramp(channels=2)
    h = torch.tensor([[2.0, 2.0], [5.0, 2.0], [4.0, 4.0]])
    g = torch.tensor([[2.0, 6.0], [5.0, 4.0], [4.0, 5.0]])  # last pair is 1 cell away: skipped
    ref = sample_patches(f, h, patch_offsets(1))
    # pair 1: step 4 -> |diff| 4 -> 16; pair 2: distance 2 < beta -> step 2 -> 8; pair 3: 0
    assert gooddrag_motion_loss(f, ref, h, g, r1=1, beta=4.0).item() == pytest.approx(24.0)


def test_loss_gradient_reaches_features_only_at_the_moved_patch():
    f = ramp().requires_grad_(True)
    h0 = torch.tensor([[2.0, 2.0]])
    ref = sample_patches(f, h0, patch_offsets(1)).detach()
    gooddrag_motion_loss(f, ref, h0, torch.tensor([[2.0, 5.0]]), r1=1, beta=3.0).backward()
    nonzero = (f.grad[0, 0] != 0).nonzero().tolist()
    assert nonzero == [[r, c] for r in (1, 2, 3) for c in (4, 5, 6)]  # the 3x3 patch around (2, 5)
    # d/dF of (2 r1)^2 * mean(|F - ref|) over 9 cells = 4 / 9 * sign per cell
    assert f.grad[0, 0, 2, 5].item() == pytest.approx(4.0 / 9.0)


def test_track_points_finds_the_known_nearest_neighbour():
    f = torch.ones(1, 2, 5, 5)
    f[0, :, 3, 4] = 0.0  # the only cell equal to the reference vector (0, 0)
    ref = torch.zeros(1, 2)
    assert track_points(f, ref, torch.tensor([[2.0, 2.0]]), r2=2).tolist() == [[3.0, 4.0]]
    # (3, 4) is outside the radius-1 window: all cells tie at distance 2 -> first in row-major order
    assert track_points(f, ref, torch.tensor([[2.0, 2.0]]), r2=1).tolist() == [[1.0, 1.0]]
    # radius 0 never moves
    assert track_points(f, ref, torch.tensor([[2.0, 2.0]]), r2=0).tolist() == [[2.0, 2.0]]


def test_track_points_ignores_cells_outside_the_map_and_handles_many_points():
    f = torch.ones(1, 1, 4, 4)
    f[0, 0, 0, 0] = 0.0
    f[0, 0, 3, 2] = 5.0
    refs = torch.tensor([[0.0], [5.0]])
    # at the corner, clamped out-of-map cells would copy (0, 0) and win the tie if not excluded
    out = track_points(f, refs, torch.tensor([[0.0, 0.0], [2.0, 2.0]]), r2=1)
    assert out.tolist() == [[0.0, 0.0], [3.0, 2.0]]


def test_background_loss_counts_only_outside_the_mask():
    x = torch.zeros(1, 1, 2, 2)
    x_orig = torch.tensor([[1.0, -2.0], [3.0, 4.0]])[None, None]
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, None]  # 1 = editable
    assert background_loss(x, x_orig, mask).item() == pytest.approx(2.0 + 3.0)
