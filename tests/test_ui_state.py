"""The web UI's pure state helpers (``gooddrag.ui.state``): points, masks, uploads, display frames, settings."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gooddrag.errors import GoodDragError
from gooddrag.ui import shortfall, state, views


# ------------------------------------------------------------------ points
def test_point_list_add_undo_clear_and_pairs():
    pts = state.add_point([], [3, 4])
    pts = state.add_point(pts, [10, 4])
    pts = state.add_point(pts, [5, 6])
    assert pts == [[3, 4], [10, 4], [5, 6]]
    with pytest.raises(GoodDragError, match="handle 2 .* has no target"):
        state.split_points(pts)
    assert state.points_to_text(pts) == "3,4>10,4"  # the pending handle is left out
    pts = state.add_point(pts, [7.5, 9])
    handles, targets = state.split_points(pts)
    np.testing.assert_array_equal(handles, [[3, 4], [5, 6]])
    np.testing.assert_array_equal(targets, [[10, 4], [7.5, 9]])
    assert state.points_to_text(pts) == "3,4>10,4; 5,6>7.5,9"
    assert state.points_from_text(state.points_to_text(pts)) == pts
    before = list(pts)
    assert state.undo_point(pts) == pts[:-1] and pts == before  # pure: the input is not changed
    assert state.undo_point([]) == []
    assert state.clear_points() == []
    with pytest.raises(GoodDragError, match="no points"):
        state.split_points([])
    with pytest.raises(GoodDragError, match="no points"):
        state.points_from_text("  ")
    with pytest.raises(GoodDragError, match="not 'x,y>x,y'"):
        state.points_from_text("1,2>3")


def test_describe_points_says_what_the_next_click_does():
    assert "handle" in state.describe_points([]) and "No points" in state.describe_points([])
    assert "target" in state.describe_points([[1, 2]])
    text = state.describe_points([[1, 2], [3, 4]])
    assert "1 pair(s): 1,2>3,4" in text and "new **handle**" in text


def test_display_frames_map_clicks_back_to_input_pixels():
    assert views.display_scale(64, 64) == 8
    assert views.display_scale(96, 80) == 5
    assert views.display_scale(1024, 300) == 1
    assert views.click_to_image([0, 0], 8, (64, 64)) == [0, 0]
    assert views.click_to_image([15, 8], 8, (64, 64)) == [1, 1]
    assert views.click_to_image([511.9, 600], 8, (64, 64)) == [63, 63]  # clamped inside
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    big = views.to_display(img, 8)
    assert big.size == (512, 384)
    np.testing.assert_array_equal(np.asarray(big)[::8, ::8], np.asarray(img))


def test_overlay_draws_pairs_and_a_pending_handle():
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:50] = True
    out = np.asarray(views.draw_overlay(img, [[20, 30], [40, 30], [10, 10]], 8, mask))
    assert out.shape == (512, 512, 3)
    red = (out[..., 0] > 200) & (out[..., 1] < 80) & (out[..., 2] < 80)
    blue = (out[..., 2] > 200) & (out[..., 0] < 80)
    assert red[30 * 8 + 3, 20 * 8 + 3] and red[10 * 8 + 3, 10 * 8 + 3]  # both handles
    assert blue[30 * 8 + 3, 40 * 8 + 3]


# ------------------------------------------------------------------- masks
def _layer(shape, box, alpha=140):
    layer = np.zeros((*shape, 4), np.uint8)
    y0, y1, x0, x1 = box
    layer[y0:y1, x0:x1] = [40, 200, 120, alpha]
    return layer


def test_mask_from_editor_layers_is_the_union_of_painted_strokes():
    # Display 8x the 64x64 input: two strokes on two layers, anti-aliased edge (alpha 1) included.
    a = _layer((512, 512), (80, 160, 80, 160))
    b = _layer((512, 512), (400, 401, 300, 309), alpha=1)  # one display row: covers input row 50
    mask = state.mask_from_editor({"background": None, "layers": [a, b], "composite": None}, (64, 64))
    assert mask.shape == (64, 64) and mask.dtype == bool
    expected = np.zeros((64, 64), bool)
    expected[10:20, 10:20] = True
    expected[50, 37:39] = True  # display cols 300..308 touch input cols 37 and 38
    np.testing.assert_array_equal(mask, expected)
    # PIL layers and layers of the input's size work too
    pil = Image.fromarray(_layer((64, 64), (0, 2, 0, 3)), "RGBA")
    assert state.mask_from_layers([pil], (64, 64)).sum() == 6


def test_mask_from_editor_empty_or_erased_is_none():
    assert state.mask_from_editor(None, (64, 64)) is None
    assert state.mask_from_editor({"background": None, "layers": [], "composite": None}, (64, 64)) is None
    erased = _layer((512, 512), (0, 100, 0, 100), alpha=0)  # the eraser leaves alpha 0
    assert state.mask_from_layers([erased], (64, 64)) is None


def test_mask_layer_round_trips():
    mask = np.zeros((16, 20), bool)
    mask[3:9, 4:15] = True
    layer = views.mask_layer(mask, 4)
    assert layer.shape == (64, 80, 4)
    np.testing.assert_array_equal(state.mask_from_layers([layer], (20, 16)), mask)
    assert views.mask_layer(None, 4) is None


# ---------------------------------------------------------- uploads, checks
def test_upload_checks_type_size_and_pixels(tmp_path):
    good = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(good)
    assert state.load_upload(good).size == (40, 30)
    rgba = tmp_path / "rgba.webp"
    Image.new("RGBA", (8, 8), (1, 2, 3, 100)).save(rgba)
    assert state.load_upload(rgba).mode == "RGB"
    with pytest.raises(GoodDragError, match=r"photo.png' is 0.0 MB; the limit is 0 MB"):
        state.load_upload(good, max_bytes=10)
    with pytest.raises(GoodDragError, match=r"40x30 = 1,200 pixels; the limit is 1,000 pixels$"):
        state.load_upload(good, max_pixels=1000)
    big = tmp_path / "big.png"
    Image.new("RGB", (8000, 8000)).save(big)
    with pytest.raises(GoodDragError, match=r"8000x8000 = 64.0 megapixels; the limit is 16.8 megapixels$"):
        state.load_upload(big)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(GoodDragError, match=r"'empty.png' is empty \(0 bytes\)$"):
        state.load_upload(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(GoodDragError, match="is not an image this app reads"):
        state.load_upload(text)
    ppm = tmp_path / "pic.ppm"
    Image.new("RGB", (4, 4)).save(ppm)
    with pytest.raises(GoodDragError, match="is a PPM image; use one of PNG, JPEG"):
        state.load_upload(ppm)
    with pytest.raises(GoodDragError, match="no such file"):
        state.load_upload(tmp_path / "missing.png")


def test_run_problem_messages():
    img = Image.new("RGB", (64, 64))
    assert state.run_problem(None, []) == "No image: upload one or pick an example first."
    assert state.run_problem(img, []).startswith("No points: click a handle")
    assert "has no target yet" in state.run_problem(img, [[1, 2]])
    assert "outside the 64x64 image" in state.run_problem(img, [[1, 2], [70, 2]])
    assert "equals its target" in state.run_problem(img, [[1, 2], [1, 2]])
    assert "the mask is 8x8" in state.run_problem(img, [[1, 2], [3, 4]], np.ones((8, 8), bool)).lower()
    assert state.run_problem(img, [[1, 2], [3, 4]]) is None


def test_run_problem_a_painted_mask_that_misses_a_handle_or_its_target():
    img = Image.new("RGB", (64, 64))
    mask = np.zeros((64, 64), bool)
    mask[:, 50:60] = True
    assert state.run_problem(img, [[52, 23], [55, 23], [34, 23], [46, 23]], mask) == (
        "Pair 2: its handle (34, 23) lies outside the mask's editable region (white = may change); "
        "paint the mask over the handle and its target, or give no mask.")
    assert state.run_problem(img, [[52, 23], [46, 23]], mask).startswith("Pair 1: its target (46, 23)")
    assert state.run_problem(img, [[52, 23], [55, 23]], mask) is None


def test_no_mask_is_said_with_what_it_costs():
    assert state.describe_mask(None) == (
        "Mask: none painted. No mask: every pixel may change; paint the region to keep the rest.")


def test_settings_presets_and_models():
    assert state.parse_settings("") == {} and state.parse_settings('{"lr": 0.1}') == {"lr": 0.1}
    with pytest.raises(GoodDragError, match="not valid JSON"):
        state.parse_settings("{lr: 1")
    with pytest.raises(GoodDragError, match="must be a JSON object"):
        state.parse_settings("[1, 2]")
    cfg = state.make_config("shapes-gooddrag", {"lora_steps": 5.0, "lr": 0.5, "r1": None})
    assert cfg.lora_steps == 5 and isinstance(cfg.lora_steps, int) and cfg.lr == 0.5 and cfg.r1 == 4  # None keeps the preset's
    with pytest.raises(GoodDragError, match="whole number"):
        state.make_config("gooddrag", {"lora_steps": 2.5})
    with pytest.raises(GoodDragError, match="must be a number"):
        state.make_config("gooddrag", {"lr": "fast"})
    with pytest.raises(GoodDragError, match="unknown setting"):
        state.make_config("gooddrag", {"speed": 3})
    with pytest.raises(GoodDragError, match="invalid setting"):
        state.make_config("gooddrag", {"drag_end_step": 0})
    assert state.default_preset(state.SHAPES_MODEL) == "shapes-gooddrag"
    assert state.default_preset("stable-diffusion-v1-5/stable-diffusion-v1-5") == "gooddrag"
    assert state.preset_for_model("some/sd", "shapes-dragdiffusion") == "dragdiffusion"
    assert state.preset_for_model(state.SHAPES_MODEL, "dragdiffusion") == "shapes-dragdiffusion"


def test_shipped_examples_are_the_shapes_cases():
    """The gallery's shapes examples are files (the UI does not import the shapes application);
    they must still be what make_case draws for their seeds."""
    from gooddrag.shapes.scenes import make_case
    from gooddrag.ui.examples import shipped_examples

    examples = shipped_examples(repo_examples=False)
    assert [ex.name for ex in examples] == ["shapes single #0", "shapes multi_point #1", "shapes multi_object #2"]
    for ex, (seed, kind) in zip(examples, [(0, "single"), (1, "multi_point"), (2, "multi_object")]):
        case = make_case(seed, size=64, kind=kind)
        np.testing.assert_array_equal(np.asarray(ex.image), case.image)
        np.testing.assert_array_equal(ex.mask, case.mask)
        assert ex.points == state.interleave_points(case.handle_points, case.target_points)


def test_mask_overlay_keeps_the_colours_under_it():
    """The points view marks the mask with an outline and hatching; every other pixel
    inside (and outside) the mask keeps the picture's colour."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32), bool)
    mask[8:24, 4:20] = True
    scale = 4
    out = np.asarray(views.draw_overlay(image, [], scale, mask)).astype(int)
    disp = np.asarray(views.to_display(image, scale)).astype(int)
    big = np.repeat(np.repeat(mask, scale, 0), scale, 1)
    marks = views.mask_marks(big)
    assert marks.any() and not marks[~big].any()  # marks lie inside the mask only
    assert 0.05 < marks[big].mean() < 0.5  # an outline and sparse hatching, not a fill
    np.testing.assert_array_equal(out[~marks], disp[~marks])
    assert (out[marks] == state.MASK_OUTLINE).all()



def test_shortfall_message_names_each_handle_short_of_its_target():
    """64x64 input at 64 px working size, sup_res_scale 1: 1 px per supervision cell; stop 1 cell."""
    import dataclasses as dc

    from PIL import Image

    from gooddrag import get_preset
    from gooddrag.methods.pipeline import DragResult, DragStats

    def result(final, reason, method="shapes-gooddrag"):
        return DragResult(image=Image.new("RGB", (64, 64)), handle_points=np.asarray(final, float),
                          initial_handle_points=np.asarray([[34.0, 23.0], [10.0, 10.0]]),
                          target_points=np.asarray([[46.0, 23.0], [20.0, 10.0]]), config=get_preset(method),
                          timings={}, stats=dc.replace(DragStats(), stop_reason=reason), working_size=(64, 64),
                          lora={})

    assert shortfall.shortfall_message(result([[45.5, 23.0], [20.0, 10.0]], "reached")) == ""
    msg = shortfall.shortfall_message(result([[36.0, 23.0], [20.0, 10.0]], "no_change"))
    assert msg == ("handle 1 stopped 10.0 px short of its target: the tracking stalled. To get closer, try "
                   "another seed, more drag steps (track per step), or the GoodDrag+ method.")
    plus = shortfall.shortfall_message(result([[36.0, 23.0], [12.0, 10.0]], "budget", "shapes-gooddrag-plus"))
    assert plus.startswith("handle 1 stopped 10.0 px short of its target; handle 2 stopped 8.0 px short")
    assert "the drag steps ran out" in plus and "GoodDrag+" not in plus


def test_a_handle_that_stopped_short_gets_an_orange_line_to_its_target():
    img = Image.new("RGB", (64, 64), (40, 40, 40))
    points = [[10.0, 30.0], [50.0, 30.0]]
    short = views.draw_overlay(img, points, 4, final_points=np.asarray([[20.0, 30.0]]), shortfall_px=1.0)
    there = views.draw_overlay(img, points, 4, final_points=np.asarray([[49.5, 30.0]]), shortfall_px=1.0)
    # halfway between the final handle (x 20) and the target (x 50), on the arrow's row: display (35*4, 30*4)
    assert short.getpixel((140, 120)) == state.SHORTFALL_COLOR
    assert there.getpixel((140, 120)) != state.SHORTFALL_COLOR


def test_the_ui_and_the_cli_build_the_same_settings_for_an_example():
    """The web UI's first run of an example (every settings box at the preset's value, numbers
    coming back as floats, true/false boxes as 1/0) and `gooddrag edit EXAMPLE --model shapes-64`
    with default flags: the same DragConfig, so the same run.json settings."""
    from gooddrag.cli import build_parser
    from gooddrag.io.options import config_from_args
    from gooddrag.methods.config import PRESETS
    from gooddrag.ui.examples import shipped_examples_dir
    from gooddrag.ui.handlers import settings_spec

    folder = shipped_examples_dir() / "shapes-single-0"
    args = build_parser().parse_args(["edit", str(folder), "--model", state.SHAPES_MODEL])
    cli = config_from_args(args)
    preset = state.default_preset(state.SHAPES_MODEL)

    def as_the_browser_sends(value):
        return value if isinstance(value, str) else float(value)

    ui = state.make_config(preset, {name: as_the_browser_sends(getattr(PRESETS[preset], name))
                                    for name, *_ in settings_spec()})
    assert ui == cli and ui.to_json() == cli.to_json()
    with pytest.raises(GoodDragError, match="setting latent_warp must be 1 \\(on\\) or 0 \\(off\\), got 2"):
        state.make_config(preset, {"latent_warp": 2})


def test_large_pictures_are_shown_scaled_down_and_clicks_map_back():
    """A 4000x3000 picture is shown at 1024x768 (scale 0.256): a click lands on the input pixel
    under the shown pixel's centre, points and masks are drawn at the shown size."""
    s = views.display_scale(4000, 3000)
    assert s == pytest.approx(0.256) and views.display_scale(1024, 300) == 1
    big = Image.new("RGB", (4000, 3000), (200, 100, 50))
    assert views.to_display(big, s).size == (1024, 768) and views.to_display(big, s).getpixel((5, 5)) == (200, 100, 50)
    assert views.click_to_image([0, 0], s, (4000, 3000)) == [1, 1]  # (0.5 / 0.256) = 1.95
    assert views.click_to_image([1023, 767], s, (4000, 3000)) == [3998, 2998]  # (1023.5 / 0.256) = 3998.05
    assert views.click_to_image([512, 384], s, (4000, 3000)) == [2001, 1501]
    np.testing.assert_allclose(views.image_to_display(np.array([[1999.5, 1499.5]]), s), [[511.5, 383.5]])  # centre to centre
    mask = np.zeros((3000, 4000), bool)
    mask[1000:2000, 2000:3000] = True
    layer = views.mask_layer(mask, s)
    assert layer.shape == (768, 1024, 4) and layer[500, 640, 3] > 0 and layer[100, 100, 3] == 0
    assert state.mask_from_layers([layer], (4000, 3000))[1500, 2500] and not state.mask_from_layers([layer], (4000, 3000))[500, 500]
    shown = views.draw_overlay(big, [[2000, 1500], [2400, 1500]], s, mask)
    assert shown.size == (1024, 768)
