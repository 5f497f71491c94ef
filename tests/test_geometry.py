"""Coordinate frames: (x, y) image pixels <-> (row, col) grid cells, sizes and masks."""

import pytest
import torch

from gooddrag.geometry import (
    grid_to_image,
    image_to_grid,
    resize_mask,
    scale_points,
    sup_grid_size,
    unet_multiple,
    working_size,
)


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
