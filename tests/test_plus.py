"""GoodDrag+ (method ``gooddrag-plus``) end to end on the tiny SD and SDXL models, and its presets.

The behaviour checks on the shipped shapes-64 model (each part of GoodDrag+ removed in turn) are in
tests/test_behaviour.py.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from gooddrag import get_preset
from gooddrag.core.warp import image_warp_for_drag, warp_for_drag
from gooddrag.methods.config import PRESETS
from tests.helpers import POINTS, make_image, make_mask, tiny_config
from tests.test_sdxl import tiny_sdxl_dir  # noqa: F401 - the tiny SDXL model fixture

LATENT_WARP = dict(image_warp=False, latent_warp=True, warp_field="translations")
"""The latent warp (the earlier start of GoodDrag+, still an option)."""


def test_every_faithful_preset_has_the_plus_options_off_and_plus_has_them_on():
    for name, config in PRESETS.items():
        plus = config.method == "gooddrag-plus"
        assert config.image_warp is plus and config.subpixel_tracking is plus and not config.latent_warp, name
        assert config.warp_field == ("affine" if plus else "translations"), name
    for base in ("gooddrag", "shapes-gooddrag", "gooddrag-sdxl", "gooddrag-sdxl-768"):
        plus = PRESETS[base.replace("gooddrag", "gooddrag-plus", 1)]
        # the same method otherwise: only the GoodDrag+ fields differ
        differ = {f.name for f in dataclasses.fields(plus) if getattr(plus, f.name) != getattr(PRESETS[base], f.name)}
        allowed = {"method", "image_warp", "warp_field", "subpixel_tracking"}
        if base == "shapes-gooddrag":  # tuned there with sub-pixel tracking (config.py)
            allowed.add("stop_distance")
        assert differ <= allowed, (base, differ)


def test_a_bad_fill_is_refused_by_name():
    with pytest.raises(Exception, match="warp_fill='smear'"):
        get_preset("gooddrag-plus", warp_fill="smear")


def test_the_warp_starts_the_handles_whole_latent_cells_along_the_drag(tiny_pipe):
    """96x80 image at 128 px working size: 128x128 working image (sides snap to the UNet's 64 px
    multiple), 16x16 latent, 64x64 supervision grid (4 cells per latent cell). Handle x 38 and
    target x 60 land on supervision columns 25 and 40: 15 cells = 3.75 latent cells, rounded to
    4 whole cells: the handle starts 16 supervision cells further."""
    cfg = tiny_config("gooddrag-plus", **LATENT_WARP)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), cfg)
    assert inputs.latent_size == (16, 16) and inputs.sup_size == (64, 64)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    warped, start = warp_for_drag(latents, inputs.handle_points, inputs.target_points, inputs.mask,
                                  inputs.sup_size, cfg)
    assert (start - inputs.handle_points).tolist() == [[0.0, 16.0]]
    outside = inputs.mask == 0
    assert torch.equal(warped[outside.expand_as(warped)], latents[outside.expand_as(latents)])
    assert not torch.equal(warped, latents)


def test_no_mask_no_warp(tiny_pipe, caplog):
    cfg = tiny_config("gooddrag-plus", **LATENT_WARP)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
    latents = torch.randn(1, 4, *inputs.latent_size)
    with caplog.at_level(logging.INFO, logger="gooddrag.core.warp"):
        warped, start = warp_for_drag(latents, inputs.handle_points, inputs.target_points, inputs.mask,
                                      inputs.sup_size, cfg)
    assert warped is latents and torch.equal(start, inputs.handle_points)
    assert "latent_warp skipped" in caplog.text
    image = inputs.working_image
    with caplog.at_level(logging.INFO, logger="gooddrag.core.warp"):
        same, _ = image_warp_for_drag(image, _working_px(inputs, inputs.handle_points_xy),
                                      _working_px(inputs, inputs.target_points_xy), inputs.mask, inputs.sup_size,
                                      tiny_config("gooddrag-plus"))
    assert same is image and "image_warp skipped" in caplog.text


def _working_px(inputs, xy):
    """(x, y) input px -> (x, y) working px."""
    (H, W), (h, w) = inputs.input_size, inputs.working_size
    return torch.as_tensor(xy, dtype=torch.float64) * torch.tensor([w / W, h / H], dtype=torch.float64)


def _edit(pipe, config, size=(96, 80)):
    events = []
    res = pipe(make_image(*size), [POINTS[0]], [POINTS[1]], mask=make_mask(*size), config=config, progress=False,
               callback=lambda e: events.append(e) if e.phase == "drag" else None)
    return res, events


@pytest.mark.parametrize("size", [(96, 80), (160, 64)])  # 16x16 and 16x8 latent cells
def test_gooddrag_plus_end_to_end_on_the_tiny_sd_model(tiny_pipe, size):
    plus, events = _edit(tiny_pipe, tiny_config("gooddrag-plus", lora_steps=0), size)
    faithful, _ = _edit(tiny_pipe, tiny_config("gooddrag", lora_steps=0), size)
    assert plus.config.method == "gooddrag-plus" and plus.image.size == size
    # the image warp takes the handle to its target: the start tracking finds it there and the
    # stop rule may end the drag at once (no optimiser step)
    assert plus.stats.tracking_steps >= 1 and events and events[0].tracking == "start"
    # the start tracking searched the r2 window around the warped handle, not the user's
    cfg = plus.config
    inputs = tiny_pipe.check_inputs(make_image(*size), [POINTS[0]], [POINTS[1]], make_mask(*size), cfg)
    _, start = image_warp_for_drag(inputs.working_image, _working_px(inputs, inputs.handle_points_xy),
                                   _working_px(inputs, inputs.target_points_xy), inputs.mask, inputs.sup_size, cfg)
    # one pair: the warp takes the handle to its target, unrounded: x 60 of 96 px -> 80 of 128 -> column 40
    (h, w), (sh, sw) = inputs.working_size, inputs.sup_size
    target_rc = _working_px(inputs, inputs.target_points_xy).flip(-1) * torch.tensor([sh / h, sw / w])
    assert torch.allclose(start.double(), target_rc)
    assert start[0, 1] > inputs.handle_points[0, 1] + cfg.r2  # the warp moved it past the user's window
    first = torch.as_tensor(tiny_pipe._grid_to_input(start, inputs))
    px_per_cell = size[0] / inputs.sup_size[1]
    assert abs(events[0].handle_points[0][0] - float(first[0, 0])) <= cfg.r2 * px_per_cell + 1e-6
    assert not np.array_equal(np.asarray(plus.image), np.asarray(faithful.image))


def test_gooddrag_plus_end_to_end_on_the_tiny_sdxl_model(tiny_sdxl_dir):
    from gooddrag import DragPipeline
    from tests.test_sdxl import _tiny_sdxl_config

    pipe = DragPipeline.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    assert pipe.default_config("gooddrag-plus") == PRESETS["gooddrag-plus-sdxl"]
    res, events = _edit(pipe, _tiny_sdxl_config("gooddrag-plus"))
    assert res.config.image_warp and max(res.working_size) == 128
    assert events[0].handle_points[0][0] > POINTS[0][0] + 5  # started along the drag


def test_the_cli_and_the_ui_offer_the_plus_options():
    from gooddrag.core.warp import FILLS
    from gooddrag.io.options import METHOD_SETTINGS, parse_fill

    flags = {name: flag for flag, name, _, _ in METHOD_SETTINGS}
    assert {"image_warp", "latent_warp", "warp_field", "warp_fill", "subpixel_tracking", "stop_distance"} <= set(flags)
    assert tuple(parse_fill.choices) == FILLS
    with pytest.raises(Exception, match="expected one of keep, neighbours, noise, got 'smear'"):
        parse_fill("smear")
