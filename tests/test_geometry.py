"""Coordinate frames: (x, y) image pixels <-> (row, col) grid cells, sizes and masks."""

import numpy as np
import pytest
import torch

from gooddrag.core.geometry import (
    check_mask_covers_points,
    grid_to_image,
    image_to_grid,
    resize_mask,
    scale_points,
    sup_grid_size,
    unet_multiple,
    working_size,
)
from gooddrag.errors import GoodDragError, InputsCannotWorkError


def test_working_size_keeps_aspect_and_rounds_to_multiples():
    assert working_size(512, 512, 512, 64) == (512, 512)
    assert working_size(480, 640, 512, 64) == (384, 512)  # 0.8 * 480 = 384
    assert working_size(300, 1000, 512, 64) == (128, 512)  # 153.6 -> nearest multiple of 64
    assert working_size(10, 1000, 512, 64) == (64, 512)  # at least one multiple
    assert working_size(100, 120, 128, 64) == (128, 128)


def test_unet_multiple_and_supervision_grid():
    assert unet_multiple(8, 4) == 64  # SD: VAE /8, three UNet downsamplings
    assert sup_grid_size((384, 512), 0.5) == (192, 256)


def test_image_pixels_to_grid_cells_and_back():
    pts = torch.tensor([[100.0, 50.0], [511.0, 255.0]])  # (x, y) on a 512 wide, 256 high image
    grid = image_to_grid(pts, (256, 512), (128, 256))
    # row = round(y * 128 / 256), col = round(x * 256 / 512)
    assert grid.tolist() == [[25.0, 50.0], [128.0, 256.0]]
    assert grid_to_image(grid, (128, 256), (256, 512)).tolist() == [[100.0, 50.0], [512.0, 256.0]]


def test_scale_points_between_image_sizes():
    pts = torch.tensor([[30.0, 40.0]])
    assert scale_points(pts, (100, 120), (128, 128)).tolist() == [pytest.approx([32.0, 51.2])]


def test_resize_mask_nearest():
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1
    assert resize_mask(mask, (2, 2))[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert resize_mask(mask, (8, 8)).shape == (1, 1, 8, 8)


# ------------------------------------------- inputs that cannot work (docs/method.md)
def _right_half_mask():
    mask = np.zeros((4, 6), bool)
    mask[:, 3:] = True  # x = 3, 4, 5 may change
    return mask


def test_a_point_is_inside_the_mask_when_the_pixel_holding_it_is():
    mask = _right_half_mask()
    # x = 3.0 and 2.99 are the first and last sub-pixel positions of pixels 3 and 2
    check_mask_covers_points(mask, np.array([[3.0, 0.0]]), np.array([[5.99, 3.99]]))
    with pytest.raises(InputsCannotWorkError, match=r"pair 1: its handle \(2.99, 1\) lies outside"):
        check_mask_covers_points(mask, np.array([[2.99, 1.0]]), np.array([[4.0, 1.0]]))


def test_the_first_pair_that_fails_is_named_with_its_target():
    mask = _right_half_mask()
    with pytest.raises(InputsCannotWorkError, match=r"pair 2: its target \(0, 0\) lies outside the mask's "
                                                    r"editable region \(white = may change\); paint the mask "
                                                    r"over the handle and its target, or give no mask"):
        check_mask_covers_points(mask, np.array([[3.0, 0.0], [4.0, 0.0]]), np.array([[4.0, 0.0], [0.0, 0.0]]))


def test_a_mask_with_nothing_editable_is_refused_whatever_the_points():
    with pytest.raises(InputsCannotWorkError, match="the mask marks nothing as editable"):
        check_mask_covers_points(np.zeros((4, 6), bool), np.array([[3.0, 0.0]]), np.array([[4.0, 0.0]]))


def test_inputs_that_cannot_work_exit_with_2_and_are_user_errors():
    assert issubclass(InputsCannotWorkError, GoodDragError) and InputsCannotWorkError.exit_code == 2
