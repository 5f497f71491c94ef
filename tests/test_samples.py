"""Exact tests of gooddrag.io.samples: point parsing and checking, images, masks and
the two benchmark sample layouts (Drag100, DragBench).

Points are (x, y) pixels of the image they were given for. Every error is a
GoodDragError with a one-line message naming the bad value.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gooddrag.errors import GoodDragError
from gooddrag.io.samples import (
    check_points,
    load_image,
    load_mask,
    load_sample,
    parse_points,
    split_point_list,
)

from .helpers import (
    POINTS,
    make_image,
    make_mask,
    require,
    write_drag100_sample,
    write_dragbench_sample,
)


def _find_real_samples() -> Path:
    """The real Drag100 samples: $GOODDRAG_DRAG100, else shared/data/drag100-format beside the
    repository or beside any folder above it (a clone may sit deeper than the working copy);
    never an absolute path. Missing: a skip locally, a failure under CI=true."""
    if os.environ.get("GOODDRAG_DRAG100"):
        return Path(os.environ["GOODDRAG_DRAG100"])
    repo = Path(__file__).resolve().parents[1]
    candidates = [folder / "shared" / "data" / "drag100-format" for folder in repo.parents]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REAL_SAMPLES = _find_real_samples()


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height (greyscale, 8 bit) and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------- parse_points
def test_parse_points_with_spaces_and_decimals():
    handles, targets = parse_points(" 10, 20.5 >  30 ,40 ;1.5,2>3,4.25 ; ")
    assert handles.dtype == np.float64 and targets.dtype == np.float64
    assert handles.tolist() == [[10.0, 20.5], [1.5, 2.0]]
    assert targets.tolist() == [[30.0, 40.0], [3.0, 4.25]]


def test_parse_points_signs_and_exponents():
    handles, targets = parse_points("1e1,+2>-3,4.5E1")
    assert handles.tolist() == [[10.0, 2.0]]
    assert targets.tolist() == [[-3.0, 45.0]]


def test_parse_points_single_pair_shapes():
    handles, targets = parse_points("38,40>60,40")
    assert handles.shape == (1, 2) and targets.shape == (1, 2)


@pytest.mark.parametrize("text", ["", "   ", " ; ;  "])
def test_parse_points_empty(text):
    with pytest.raises(GoodDragError) as err:
        parse_points(text)
    assert one_line(err) == "--points is empty; write pairs as 'x,y>x,y; x,y>x,y'"


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2>3", "point pair 1 '1,2>3' is not 'x,y>x,y'"),  # odd number of coordinates
        ("1,2>3,4; 5,6", "point pair 2 '5,6' is not 'x,y>x,y'"),  # a pair without target
        ("1,2,3>4,5", "point pair 1 '1,2,3>4,5' is not 'x,y>x,y'"),
        ("1 2>3 4", "point pair 1 '1 2>3 4' is not 'x,y>x,y'"),
        ("a,b>c,d", "point pair 1 'a,b>c,d' is not 'x,y>x,y'"),
        ("1,2<3,4", "point pair 1 '1,2<3,4' is not 'x,y>x,y'"),
    ],
)
def test_parse_points_malformed_pair(text, message):
    with pytest.raises(GoodDragError) as err:
        parse_points(text)
    assert one_line(err) == message


@pytest.mark.parametrize("text", ["1.2.3,4>5,6", "1,2>3,--4", "1,2>e,4"])
def test_parse_points_coordinate_not_a_number(text):
    with pytest.raises(GoodDragError) as err:
        parse_points(text)
    assert one_line(err) == f"point pair 1 {text!r} has a coordinate that is not a number"


# ----------------------------------------------------------- split_point_list
def test_split_point_list_pairs():
    handles, targets = split_point_list([[1, 2], [3, 4], [5, 6], [7, 8]], "x")
    assert handles.tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert targets.tolist() == [[3.0, 4.0], [7.0, 8.0]]


def test_split_point_list_flat_even():
    handles, targets = split_point_list([1, 2, 3, 4], "x")
    assert handles.tolist() == [[1.0, 2.0]]
    assert targets.tolist() == [[3.0, 4.0]]


def test_split_point_list_odd_number_of_points():
    with pytest.raises(GoodDragError) as err:
        split_point_list([[1, 2], [3, 4], [5, 6]], "'p.json'")
    assert one_line(err) == "points in 'p.json': odd number of points (3); they alternate handle, target"


def test_split_point_list_flat_odd_coordinates():
    with pytest.raises(GoodDragError) as err:
        split_point_list([1, 2, 3], "'p.json'")
    assert one_line(err) == "points in 'p.json': odd number of coordinates (3)"


def test_split_point_list_empty():
    with pytest.raises(GoodDragError) as err:
        split_point_list([], "'p.json'")
    assert one_line(err) == "points in 'p.json': the list is empty"


@pytest.mark.parametrize(
    "points, message",
    [
        ([[1, 2], [3]], "points in 'p.json' are not a list of [x, y] pairs"),
        ("abc", "points in 'p.json' are not a list of [x, y] pairs"),
        ([[1, 2, 3], [4, 5, 6]], "points in 'p.json' are not a list of [x, y] pairs (shape (2, 3))"),
        (None, "points in 'p.json' are not a list of [x, y] pairs (shape ())"),
    ],
)
def test_split_point_list_not_pairs(points, message):
    with pytest.raises(GoodDragError) as err:
        split_point_list(points, "'p.json'")
    assert one_line(err) == message


# --------------------------------------------------------------- check_points
def test_check_points_returns_float_arrays_and_accepts_the_last_pixel():
    handles, targets = check_points([[0, 0], [95.5, 79.5]], [(10, 10), (20, 20)], (80, 96))
    assert handles.dtype == np.float64 and targets.dtype == np.float64
    assert handles.tolist() == [[0.0, 0.0], [95.5, 79.5]]
    assert targets.tolist() == [[10.0, 10.0], [20.0, 20.0]]


@pytest.mark.parametrize(
    "handles, targets, message",
    [
        ([[96, 10]], [[10, 10]], "handle point 1 (96, 10) is outside the 96x80 image"),  # x == W
        ([[10, 80]], [[10, 10]], "handle point 1 (10, 80) is outside the 96x80 image"),  # y == H
        ([[1, 1], [2, 2]], [[5, 5], [-1, 5.5]], "target point 2 (-1, 5.5) is outside the 96x80 image"),
    ],
)
def test_check_points_outside_the_image(handles, targets, message):
    with pytest.raises(GoodDragError) as err:
        check_points(handles, targets, (80, 96))  # (H, W)
    assert one_line(err) == message


def test_check_points_count_mismatch():
    with pytest.raises(GoodDragError) as err:
        check_points([[1, 1], [2, 2]], [[5, 5]], (80, 96))
    assert one_line(err) == "2 handle point(s) but 1 target point(s)"


def test_check_points_handle_equal_to_target():
    with pytest.raises(GoodDragError) as err:
        check_points([[1, 1], [5, 6]], [[3, 3], [5, 6]], (80, 96))
    assert one_line(err) == "handle point 2 (5, 6) equals its target"


@pytest.mark.parametrize(
    "handles, targets, message",
    [
        ([[np.nan, 1]], [[3, 3]], "handle points contain a non-finite coordinate"),
        ([[1, 1]], [[3, np.inf]], "target points contain a non-finite coordinate"),
    ],
)
def test_check_points_non_finite(handles, targets, message):
    with pytest.raises(GoodDragError) as err:
        check_points(handles, targets, (80, 96))
    assert one_line(err) == message


def test_check_points_empty_and_bad_shape():
    with pytest.raises(GoodDragError) as err:
        check_points(np.zeros((0, 2)), np.zeros((0, 2)), (80, 96))
    assert one_line(err) == "no points given: at least one handle and one target are needed"
    with pytest.raises(GoodDragError) as err:
        check_points([1, 2], [[3, 4]], (80, 96))
    assert one_line(err) == "handle points must be a list of (x, y) pairs, got shape (2,)"


def test_parse_then_check_overflowing_coordinate_is_non_finite():
    handles, targets = parse_points("1e999,2>3,4")
    with pytest.raises(GoodDragError) as err:
        check_points(handles, targets, (80, 96))
    assert one_line(err) == "handle points contain a non-finite coordinate"


# ------------------------------------------------------------------ load_mask
def test_load_mask_binary_png(tmp_path):
    mask = make_mask()
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.shape == (80, 96)
    assert np.array_equal(out, mask)


def test_load_mask_rgb_with_identical_channels(tmp_path):
    mask = make_mask()
    grey = mask.astype(np.uint8) * 255
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "RGB"
    assert np.array_equal(load_mask(tmp_path / "m.png"), mask)


def test_load_mask_rgba_and_one_bit_and_16_bit(tmp_path):
    mask = make_mask()
    grey = mask.astype(np.uint8) * 255
    Image.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 255)], -1)).save(tmp_path / "rgba.png")
    Image.fromarray(mask).save(tmp_path / "one.png")  # mode "1"
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "i16.png")
    for name in ("rgba.png", "one.png", "i16.png"):
        assert np.array_equal(load_mask(tmp_path / name), mask), name


def test_load_mask_grey_levels_is_not_binary(tmp_path):
    arr = np.zeros((8, 8), np.uint8)
    arr[:, 3:] = 128
    arr[:, 6:] = 255
    path = tmp_path / "grey.png"
    Image.fromarray(arr).save(path)
    with pytest.raises(GoodDragError) as err:
        load_mask(path)
    assert one_line(err) == (
        f"mask {str(path)!r} is not binary: it has 3 levels (0..255); "
        "use black (0) for keep and white for editable"
    )


def test_load_mask_two_levels_without_black_is_not_binary(tmp_path):
    arr = np.full((8, 8), 10, np.uint8)
    arr[:, 4:] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(GoodDragError, match="is not binary: it has 2 levels"):
        load_mask(tmp_path / "m.png")


def test_load_mask_colour_image(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[:, 4:, 0] = 255  # red where editable
    Image.fromarray(arr).save(tmp_path / "red.png")
    with pytest.raises(GoodDragError) as err:
        load_mask(tmp_path / "red.png")
    assert one_line(err) == f"mask {str(tmp_path / 'red.png')!r} is a colour image; give a black-and-white mask"


def test_load_mask_unreadable_and_missing(tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_text("this is not an image\n")
    with pytest.raises(GoodDragError) as err:
        load_mask(bad)
    assert one_line(err) == f"mask {str(bad)!r} cannot be read as an image (UnidentifiedImageError)"
    with pytest.raises(GoodDragError) as err:
        load_mask(tmp_path / "nope.png")
    assert one_line(err) == f"mask {str(tmp_path / 'nope.png')!r}: no such file"


# ----------------------------------------------------------------- load_image
def test_load_image_converts_to_rgb(tmp_path):
    make_image().convert("L").save(tmp_path / "grey.png")
    im = load_image(tmp_path / "grey.png")
    assert im.mode == "RGB" and im.size == (96, 80)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(GoodDragError) as err:
        load_image(tmp_path / "missing.png")
    assert one_line(err) == f"image {str(tmp_path / 'missing.png')!r}: no such file"


def test_load_image_text_file_named_png(tmp_path):
    path = tmp_path / "photo.png"
    path.write_text("hello, I am text\nsecond line\n")
    with pytest.raises(GoodDragError) as err:
        load_image(path)
    assert one_line(err) == f"image {str(path)!r} cannot be read as an image (UnidentifiedImageError)"


def test_load_image_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    make_image().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GoodDragError) as err:
        load_image(path)
    assert one_line(err).startswith(f"image {str(path)!r} cannot be read as an image (")


def test_load_image_folder_is_not_a_file(tmp_path):
    with pytest.raises(GoodDragError, match="no such file"):
        load_image(tmp_path)


@pytest.mark.parametrize("loader", [load_image, load_mask], ids=["image", "mask"])
def test_huge_image_is_a_one_line_error(tmp_path, loader):
    path = png_header_only(tmp_path / "huge.png", 20000, 20000)  # 400 M pixels, a few bytes on disk
    with pytest.raises(GoodDragError) as err:
        loader(path)
    one_line(err)


# ----------------------------------------------------------- load_sample: layouts
def test_load_sample_drag100(tmp_path):
    folder = write_drag100_sample(tmp_path / "cat_9")
    s = load_sample(folder)
    assert s.layout == "drag100" and s.name == "cat_9" and s.prompt == ""
    assert s.image.mode == "RGB" and s.image.size == (96, 80)
    assert s.handle_points.tolist() == [POINTS[0]]
    assert s.target_points.tolist() == [POINTS[1]]
    assert s.mask.dtype == bool and np.array_equal(s.mask, make_mask())
    assert s.files == {
        "image": folder / "original.jpg", "points": folder / "points.json", "mask": folder / "mask.png"
    }


def test_load_sample_drag100_prompt_and_no_mask(tmp_path, caplog):
    folder = write_drag100_sample(tmp_path / "s")
    (folder / "mask.png").unlink()
    (folder / "points.json").write_text(json.dumps({"points": POINTS + [[10, 10], [12, 20]], "prompt": "a disc"}))
    s = load_sample(folder)
    assert s.layout == "drag100" and s.prompt == "a disc" and s.mask is None
    assert s.handle_points.tolist() == [POINTS[0], [10, 10]]
    assert s.target_points.tolist() == [POINTS[1], [12, 20]]
    assert set(s.files) == {"image", "points"}
    # reading it says nothing: the run's one "no mask" warning is the pipeline's (tests/test_pipeline.py)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"pts": POINTS}), json.dumps(POINTS)])
def test_load_sample_drag100_bad_points_json(tmp_path, content):
    folder = write_drag100_sample(tmp_path / "s")
    (folder / "points.json").write_text(content)
    with pytest.raises(GoodDragError) as err:
        load_sample(folder)
    assert one_line(err) == f"{str(folder / 'points.json')!r} is not JSON with a 'points' list"


def test_load_sample_drag100_odd_points(tmp_path):
    folder = write_drag100_sample(tmp_path / "s")
    (folder / "points.json").write_text(json.dumps({"points": POINTS + [[1, 1]]}))
    with pytest.raises(GoodDragError, match=r"odd number of points \(3\)"):
        load_sample(folder)


def test_load_sample_dragbench(tmp_path):
    folder = write_dragbench_sample(tmp_path / "art_1")
    s = load_sample(folder)
    assert s.layout == "dragbench" and s.name == "art_1" and s.prompt == "a yellow disc"
    assert s.image.size == (96, 80)
    assert np.array_equal(np.asarray(s.image), np.asarray(make_image()))  # PNG: lossless
    assert s.handle_points.tolist() == [POINTS[0]]
    assert s.target_points.tolist() == [POINTS[1]]
    assert s.mask.dtype == bool and np.array_equal(s.mask, make_mask())
    assert s.files == {"image": folder / "original_image.png", "meta": folder / "meta_data.pkl"}


def test_load_sample_dragbench_flat_points_and_no_mask(tmp_path):
    folder = write_dragbench_sample(tmp_path / "s")
    meta = {"prompt": None, "points": np.array([38.0, 40.0, 60.0, 40.0])}
    (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta))
    s = load_sample(folder)
    assert s.prompt == "" and s.mask is None
    assert s.handle_points.tolist() == [[38.0, 40.0]] and s.target_points.tolist() == [[60.0, 40.0]]


def test_load_sample_dragbench_garbage_pickle(tmp_path):
    folder = write_dragbench_sample(tmp_path / "s")
    meta = folder / "meta_data.pkl"
    for garbage in (b"garbage bytes, not a pickle", b"\x00\x01\x02\x03", b""):
        meta.write_bytes(garbage)
        with pytest.raises(GoodDragError) as err:
            load_sample(folder)
        assert one_line(err).startswith(f"{str(meta)!r} is not a DragBench meta_data.pkl (")


@pytest.mark.parametrize("meta", [[1, 2, 3], {"prompt": "no points"}, "a string"])
def test_load_sample_dragbench_pickle_of_the_wrong_shape(tmp_path, meta):
    folder = write_dragbench_sample(tmp_path / "s")
    (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(GoodDragError) as err:
        load_sample(folder)
    assert one_line(err).startswith(f"{str(folder / 'meta_data.pkl')!r} is not a DragBench meta_data.pkl (")


class _RunsAShellCommand:
    """Pickles as a call of os.system(command): what a hostile meta_data.pkl does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _hostile_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        # what pickle itself writes (the module is os.system's real home, posix on Linux)
        "pickled": pickle.dumps({"points": POINTS, "x": _RunsAShellCommand(cmd)}),
        # hand-written protocol 0: GLOBAL 'os system', args tuple, REDUCE
        "handwritten": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
        # builtins.exec of Python code
        "exec": b"cbuiltins\nexec\n(S'open(" + repr(str(marker)).encode() + b", \"w\").close()'\ntR.",
    }


@pytest.mark.parametrize("kind", ["pickled", "handwritten", "exec"])
def test_load_sample_dragbench_pickle_running_code_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    folder = write_dragbench_sample(tmp_path / "s")
    (folder / "meta_data.pkl").write_bytes(_hostile_pickles(marker)[kind])
    with pytest.raises(GoodDragError) as err:
        load_sample(folder)
    msg = one_line(err)
    assert msg.startswith(f"{str(folder / 'meta_data.pkl')!r} is not a DragBench meta_data.pkl (UnpicklingError: refusing to load ")
    assert ("system" in msg) if kind != "exec" else ("builtins.exec" in msg)
    assert not marker.exists(), "the pickle's code ran"


def test_load_sample_dragbench_corrupt_length_field_is_a_one_line_error(tmp_path):
    folder = write_dragbench_sample(tmp_path / "s")
    (folder / "meta_data.pkl").write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 1 << 63))
    with pytest.raises(GoodDragError, match="is not a DragBench meta_data.pkl"):
        load_sample(folder)


@pytest.mark.parametrize("protocol", [2, 5])
def test_load_sample_dragbench_other_pickle_protocols(tmp_path, protocol):
    folder = write_dragbench_sample(tmp_path / "s")
    meta = {"prompt": "p", "points": POINTS, "mask": make_mask().astype(np.uint8)}
    (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta, protocol=protocol))
    s = load_sample(folder)
    assert np.array_equal(s.mask, make_mask())


def test_load_sample_dragbench_protocol_3_and_4(tmp_path):
    folder = write_dragbench_sample(tmp_path / "s")
    for protocol in (3, 4):
        meta = {"prompt": "p", "points": POINTS, "mask": make_mask().astype(np.uint8)}
        (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta, protocol=protocol))
        assert np.array_equal(load_sample(folder).mask, make_mask())


def test_load_sample_dragbench_non_binary_mask(tmp_path):
    folder = write_dragbench_sample(tmp_path / "s")
    mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
    (folder / "meta_data.pkl").write_bytes(pickle.dumps({"points": POINTS, "mask": mask}))
    with pytest.raises(GoodDragError, match=r"mask in '.*meta_data.pkl' is not binary: it has 16 levels"):
        load_sample(folder)


def test_load_sample_neither_layout(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    make_image().save(folder / "photo.png")
    (folder / "points.json").write_text(json.dumps({"points": POINTS}))  # but no original.jpg
    with pytest.raises(GoodDragError) as err:
        load_sample(folder)
    assert one_line(err) == (
        f"{str(folder)!r} is not a sample folder: expected Drag100 (original.jpg, mask.png, points.json), "
        "DragBench (original_image.png, meta_data.pkl) or a web UI example (image.png, mask.png, points.json)"
    )


def test_the_web_ui_examples_open_as_samples():
    """``gooddrag edit src/gooddrag/assets/examples/shapes-single-0`` reads what the UI shows."""
    from gooddrag.ui.examples import shipped_examples, shipped_examples_dir

    examples = {e.name: e for e in shipped_examples(repo_examples=False)}
    for folder in sorted(shipped_examples_dir().iterdir()):
        if not (folder / "points.json").is_file():
            continue
        sample = load_sample(folder)
        meta = json.loads((folder / "points.json").read_text())
        ui = examples[meta["name"]]
        assert sample.layout == "example" and np.array_equal(np.asarray(sample.image), np.asarray(ui.image))
        assert np.array_equal(sample.mask, ui.mask)
        assert np.array_equal(np.stack([sample.handle_points, sample.target_points], 1).reshape(-1, 2), ui.points)


def test_load_sample_missing_folder(tmp_path):
    with pytest.raises(GoodDragError) as err:
        load_sample(tmp_path / "nope")
    assert one_line(err) == f"sample folder {str(tmp_path / 'nope')!r}: no such folder"


# ---------------------------------------------------------- the real samples
@pytest.mark.parametrize("name, pairs", [("cat_2", 2), ("furniture_0", 3)])
def test_real_drag100_samples(name, pairs):
    require(REAL_SAMPLES.is_dir(), f"{REAL_SAMPLES} not present (no benchmark data here; set GOODDRAG_DRAG100)")
    s = load_sample(REAL_SAMPLES / name)
    assert s.layout == "drag100" and s.name == name
    assert s.image.mode == "RGB" and s.image.size == (512, 512)
    assert s.handle_points.shape == s.target_points.shape == (pairs, 2)
    assert s.mask is not None and s.mask.dtype == bool and s.mask.shape == (512, 512)
    assert 0 < s.mask.sum() < s.mask.size
    check_points(s.handle_points, s.target_points, (512, 512))  # every point inside, none at its target
