"""GoodDrag+'s latent warp (gooddrag.core.warp) and sub-pixel tracking (gooddrag.core.tracking): hand-worked answers."""

from __future__ import annotations

import pytest
import torch

from gooddrag.core.tracking import parabola_offset, track_points, track_points_subpixel
from gooddrag.core.warp import drag_field, warp_latent, warped_points


def row_latent(values):
    """(1, 1, 1, W) latent from a list: one row of cells."""
    return torch.tensor(values, dtype=torch.float32)[None, None, None]


def row_mask(cells, width):
    m = torch.zeros(1, 1, 1, width)
    m[..., cells] = 1.0
    return m


# ------------------------------------------------------------------ drag_field
def test_one_pair_moves_every_cell_by_its_displacement():
    field = drag_field(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 5.0]]), (3, 4))
    assert field.shape == (3, 4, 2)
    assert torch.allclose(field, torch.tensor([0.0, 3.0], dtype=field.dtype).expand(3, 4, 2), atol=1e-12, rtol=0)


def test_two_pairs_exact_at_their_targets_and_averaged_halfway():
    targets = torch.tensor([[2.0, 0.0], [2.0, 4.0]])  # first pair moves 2 rows down, the second 2 cols right
    handles = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    field = drag_field(handles, targets, (3, 5))
    assert field[2, 0].tolist() == [2.0, 0.0]  # on the first target: its displacement
    assert field[2, 4].tolist() == [0.0, 2.0]  # on the second
    # (2, 2) is 2 cells from both targets: equal weights, the mean of (2, 0) and (0, 2)
    assert field[2, 2].tolist() == pytest.approx([1.0, 1.0])


# ------------------------------------------------------------------ warp_latent
def test_warp_moves_the_masked_cells_and_never_touches_the_rest():
    """Cells 1..4 of 0..5 may change; everything moves 2 cells right. Cell 3 takes cell 1, cell 4
    takes cell 2; cells 1 and 2 would take cells -1 (outside the image) and 0 (outside the mask):
    vacated. keep: they keep their own values; neighbours: the nearest cell outside the mask
    (cell 0 for both: 1 and 2 cells away, against 4 and 3 for cell 5)."""
    latent = row_latent([10, 11, 12, 13, 14, 15])
    mask = row_mask([1, 2, 3, 4], 6)
    field = torch.tensor([0.0, 2.0]).expand(1, 6, 2)
    kept, vacated = warp_latent(latent, field, mask, fill="keep")
    assert kept.flatten().tolist() == [10, 11, 12, 11, 12, 15]
    assert vacated.flatten().tolist() == [False, True, True, False, False, False]
    filled, _ = warp_latent(latent, field, mask, fill="neighbours")
    assert filled.flatten().tolist() == [10, 10, 10, 11, 12, 15]


def test_warp_rounds_to_whole_cells_so_values_are_copied_never_blended():
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 8, 8, generator=gen)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    field = torch.tensor([0.6, -1.4]).expand(8, 8, 2)  # rounds to (1, -1)
    out, vacated = warp_latent(latent, field, mask, fill="keep")
    assert torch.equal(out[..., 3:6, 2:5], latent[..., 2:5, 3:6])  # moved by (+1 row, -1 col), exact copies
    assert torch.equal(out * (1 - mask), latent * (1 - mask))  # outside the mask: untouched
    assert int(vacated.sum()) == 16 - 9


def test_noise_fill_matches_the_background_statistics_and_is_seeded():
    latent = torch.zeros(1, 2, 16, 16)
    latent[:, 0] = 3.0  # background: channel 0 all 3, channel 1 alternating -2 / 2 (mean 0, std 2)
    latent[:, 1] = torch.tensor([-2.0, 2.0]).repeat(8)[None].expand(16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    field = torch.tensor([0.0, 4.0]).expand(16, 16, 2)
    a, vacated = warp_latent(latent, field, mask, fill="noise", generator=torch.Generator().manual_seed(1))
    b, _ = warp_latent(latent, field, mask, fill="noise", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    v = a[0][:, vacated]  # (2, n) the filled cells
    assert torch.all(v[0] == 3.0)  # std 0 in channel 0: exactly its mean
    assert abs(float(v[1].mean())) < 1.0 and 1.0 < float(v[1].std()) < 3.0  # 32 draws of N(0, 2)


def test_bad_fill_is_refused():
    with pytest.raises(ValueError, match="fill must be one of"):
        warp_latent(row_latent([0, 1]), torch.zeros(1, 2, 2), row_mask([0], 2), fill="smear")


def test_warped_points_follow_a_rigid_move_in_supervision_cells():
    field = torch.tensor([1.0, -2.0]).expand(16, 16, 2)  # latent cells
    scale = torch.tensor([4.0, 4.0])  # supervision cells per latent cell
    got = warped_points(torch.tensor([[20.0, 33.0], [3.0, 40.0]]), field, scale)
    assert got.tolist() == [[24.0, 25.0], [7.0, 32.0]]


# ------------------------------------------------------------------ sub-pixel tracking
def test_parabola_offset_by_hand():
    # through (-1, 4), (0, 1), (1, 2): curvature 4 - 2 + 2 = 4, offset (4 - 2) / 8 = 0.25
    got = parabola_offset(torch.tensor([4.0, 3.0, 1.0, float("inf")]), torch.tensor([1.0, 1.0, 1.0, 1.0]),
                          torch.tensor([2.0, 3.0, 1.0, 2.0]))
    assert got.tolist() == [0.25, 0.0, 0.0, 0.0]  # symmetric: 0; flat (no minimum): 0; missing neighbour: 0


def bowl(centre, size=(12, 10)):
    """(1, 1, h, w) features: squared distance to ``centre`` (row, col); a reference of 0 matches it best."""
    r, c = torch.meshgrid(torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32),
                          indexing="ij")
    return ((r - centre[0]) ** 2 + (c - centre[1]) ** 2)[None, None]


def test_subpixel_tracking_finds_a_quadratic_minimum_exactly():
    """L1 to a zero reference is the bowl itself; a parabola through three samples of a quadratic
    is the quadratic, so the refined point is its centre: (5.25, 3.0) from the best cell (5, 3)."""
    features = bowl((5.25, 3.0))
    got = track_points_subpixel(features, torch.zeros(1, 1), torch.tensor([[4.0, 4.0]]), r2=3)
    assert got.tolist() == [[5.25, 3.0]]
    assert track_points(features, torch.zeros(1, 1), torch.tensor([[4.0, 4.0]]), r2=3).tolist() == [[5.0, 3.0]]


def test_subpixel_tracking_equals_whole_cell_tracking_on_a_cell():
    features = bowl((6.0, 2.0))
    handles = torch.tensor([[5.0, 3.0], [8.4, 1.6]])  # the second is fractional: its window is centred on (8, 2)
    got = track_points_subpixel(features, torch.zeros(2, 1), handles, r2=2)
    assert got.tolist() == [[6.0, 2.0], [6.0, 2.0]]
