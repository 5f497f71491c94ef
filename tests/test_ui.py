"""The web UI (``gooddrag ui``): pure helpers, the gradio_client API, and a real browser.

The app-level tests start the app on a free loopback port with the shipped
shapes-64 model on the CPU; they do not depend on the quality of its results.
The browser test drives Debian's /usr/bin/chromium headless through Playwright
(skipped without it) and never downloads a browser.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gooddrag import ui
from gooddrag.errors import GoodDragError
from gooddrag.outputs import RESULT_FILES

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
EVERY_RESULT_FILE = {*RESULT_FILES, "mask.png", "trajectory.gif"}
FAST = {"lora_steps": 5, "num_inference_steps": 10, "drag_end_step": 2, "track_per_step": 2}
"""Small settings: the edit takes a few seconds on one CPU thread."""


# ------------------------------------------------------------------ points
def test_point_list_add_undo_clear_and_pairs():
    pts = ui.add_point([], [3, 4])
    pts = ui.add_point(pts, [10, 4])
    pts = ui.add_point(pts, [5, 6])
    assert pts == [[3, 4], [10, 4], [5, 6]]
    with pytest.raises(GoodDragError, match="handle 2 .* has no target"):
        ui.split_points(pts)
    assert ui.points_to_text(pts) == "3,4>10,4"  # the pending handle is left out
    pts = ui.add_point(pts, [7.5, 9])
    handles, targets = ui.split_points(pts)
    np.testing.assert_array_equal(handles, [[3, 4], [5, 6]])
    np.testing.assert_array_equal(targets, [[10, 4], [7.5, 9]])
    assert ui.points_to_text(pts) == "3,4>10,4; 5,6>7.5,9"
    assert ui.points_from_text(ui.points_to_text(pts)) == pts
    before = list(pts)
    assert ui.undo_point(pts) == pts[:-1] and pts == before  # pure: the input is not changed
    assert ui.undo_point([]) == []
    assert ui.clear_points() == []
    with pytest.raises(GoodDragError, match="no points"):
        ui.split_points([])
    with pytest.raises(GoodDragError, match="no points"):
        ui.points_from_text("  ")
    with pytest.raises(GoodDragError, match="not 'x,y>x,y'"):
        ui.points_from_text("1,2>3")


def test_describe_points_says_what_the_next_click_does():
    assert "handle" in ui.describe_points([]) and "No points" in ui.describe_points([])
    assert "target" in ui.describe_points([[1, 2]])
    text = ui.describe_points([[1, 2], [3, 4]])
    assert "1 pair(s): 1,2>3,4" in text and "new **handle**" in text


def test_display_frames_map_clicks_back_to_input_pixels():
    assert ui.display_scale(64, 64) == 8
    assert ui.display_scale(96, 80) == 5
    assert ui.display_scale(1024, 300) == 1
    assert ui.click_to_image([0, 0], 8, (64, 64)) == [0, 0]
    assert ui.click_to_image([15, 8], 8, (64, 64)) == [1, 1]
    assert ui.click_to_image([511.9, 600], 8, (64, 64)) == [63, 63]  # clamped inside
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    big = ui.to_display(img, 8)
    assert big.size == (512, 384)
    np.testing.assert_array_equal(np.asarray(big)[::8, ::8], np.asarray(img))


def test_overlay_draws_pairs_and_a_pending_handle():
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:50] = True
    out = np.asarray(ui.draw_overlay(img, [[20, 30], [40, 30], [10, 10]], 8, mask))
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
    mask = ui.mask_from_editor({"background": None, "layers": [a, b], "composite": None}, (64, 64))
    assert mask.shape == (64, 64) and mask.dtype == bool
    expected = np.zeros((64, 64), bool)
    expected[10:20, 10:20] = True
    expected[50, 37:39] = True  # display cols 300..308 touch input cols 37 and 38
    np.testing.assert_array_equal(mask, expected)
    # PIL layers and layers of the input's size work too
    pil = Image.fromarray(_layer((64, 64), (0, 2, 0, 3)), "RGBA")
    assert ui.mask_from_layers([pil], (64, 64)).sum() == 6


def test_mask_from_editor_empty_or_erased_is_none():
    assert ui.mask_from_editor(None, (64, 64)) is None
    assert ui.mask_from_editor({"background": None, "layers": [], "composite": None}, (64, 64)) is None
    erased = _layer((512, 512), (0, 100, 0, 100), alpha=0)  # the eraser leaves alpha 0
    assert ui.mask_from_layers([erased], (64, 64)) is None


def test_mask_layer_round_trips():
    mask = np.zeros((16, 20), bool)
    mask[3:9, 4:15] = True
    layer = ui.mask_layer(mask, 4)
    assert layer.shape == (64, 80, 4)
    np.testing.assert_array_equal(ui.mask_from_layers([layer], (20, 16)), mask)
    assert ui.mask_layer(None, 4) is None


# ---------------------------------------------------------- uploads, checks
def test_upload_checks_type_size_and_pixels(tmp_path):
    good = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(good)
    assert ui.load_upload(good).size == (40, 30)
    rgba = tmp_path / "rgba.webp"
    Image.new("RGBA", (8, 8), (1, 2, 3, 100)).save(rgba)
    assert ui.load_upload(rgba).mode == "RGB"
    with pytest.raises(GoodDragError, match=r"photo.png' is 0.0 MB; the limit is 0 MB"):
        ui.load_upload(good, max_bytes=10)
    with pytest.raises(GoodDragError, match=r"40x30 = 0.0 megapixels; the limit is 0.0"):
        ui.load_upload(good, max_pixels=1000)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(GoodDragError, match="is not an image this app reads"):
        ui.load_upload(text)
    ppm = tmp_path / "pic.ppm"
    Image.new("RGB", (4, 4)).save(ppm)
    with pytest.raises(GoodDragError, match="is a PPM image; use one of PNG, JPEG"):
        ui.load_upload(ppm)
    with pytest.raises(GoodDragError, match="no such file"):
        ui.load_upload(tmp_path / "missing.png")


def test_run_problem_messages():
    img = Image.new("RGB", (64, 64))
    assert ui.run_problem(None, []) == "No image: upload one or pick an example first."
    assert ui.run_problem(img, []).startswith("No points: click a handle")
    assert "has no target yet" in ui.run_problem(img, [[1, 2]])
    assert "outside the 64x64 image" in ui.run_problem(img, [[1, 2], [70, 2]])
    assert "equals its target" in ui.run_problem(img, [[1, 2], [1, 2]])
    assert "the mask is 8x8" in ui.run_problem(img, [[1, 2], [3, 4]], np.ones((8, 8), bool)).lower()
    assert ui.run_problem(img, [[1, 2], [3, 4]]) is None


def test_settings_presets_and_models():
    assert ui.parse_settings("") == {} and ui.parse_settings('{"lr": 0.1}') == {"lr": 0.1}
    with pytest.raises(GoodDragError, match="not valid JSON"):
        ui.parse_settings("{lr: 1")
    with pytest.raises(GoodDragError, match="must be a JSON object"):
        ui.parse_settings("[1, 2]")
    cfg = ui.make_config("shapes-gooddrag", {"lora_steps": 5.0, "lr": 0.5, "r1": None})
    assert cfg.lora_steps == 5 and isinstance(cfg.lora_steps, int) and cfg.lr == 0.5 and cfg.r1 == 4  # None keeps the preset's
    with pytest.raises(GoodDragError, match="whole number"):
        ui.make_config("gooddrag", {"lora_steps": 2.5})
    with pytest.raises(GoodDragError, match="must be a number"):
        ui.make_config("gooddrag", {"lr": "fast"})
    with pytest.raises(GoodDragError, match="unknown setting"):
        ui.make_config("gooddrag", {"speed": 3})
    with pytest.raises(GoodDragError, match="invalid setting"):
        ui.make_config("gooddrag", {"drag_end_step": 0})
    assert ui.default_preset(ui.SHAPES_MODEL) == "shapes-gooddrag"
    assert ui.default_preset("stable-diffusion-v1-5/stable-diffusion-v1-5") == "gooddrag"
    assert ui.preset_for_model("some/sd", "shapes-dragdiffusion") == "dragdiffusion"
    assert ui.preset_for_model(ui.SHAPES_MODEL, "dragdiffusion") == "shapes-dragdiffusion"
    assert Path(ui.resolve_model(ui.SHAPES_MODEL), "model_index.json").is_file()
    with pytest.raises(GoodDragError, match="no model"):
        ui.resolve_model(" ")


def test_result_names_and_zip(tmp_path):
    names = {ui.result_name() for _ in range(20)}
    assert len(names) == 20
    assert all(len(n) == len("20250101-120000-abcdef") and n[8] == "-" for n in names)
    folder = tmp_path / "run1"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "b.png").write_bytes(b"b")
    z = ui.zip_folder(folder, tmp_path / "run1.zip")
    assert sorted(zipfile.ZipFile(z).namelist()) == ["run1/a.txt", "run1/b.png"]


def test_add_arguments_does_not_import_gradio():
    # (the package itself imports torch; gradio must wait until the app is built)
    code = (
        "import argparse, sys; from gooddrag import ui; "
        "a = ui.add_arguments(argparse.ArgumentParser()).parse_args(['--port', '7999']); "
        "assert (a.host, a.port, a.share, a.model) == ('127.0.0.1', 7999, False, 'shapes-64'), a; "
        "assert a.results_dir == 'gooddrag-ui-results'; "
        "assert 'gradio' not in sys.modules, 'gradio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ engine
def test_engine_cancel_stops_cleanly_and_the_next_run_works(tmp_path):
    from gooddrag.shapes.scenes import make_case

    engine = ui.Engine(tmp_path / "results", "cpu", lora_cache_dir=tmp_path / "lora")
    case = make_case(0)
    image = Image.fromarray(case.image)
    points = ui._interleave(case.handle_points, case.target_points)
    seen = []

    def cancel_at_inversion(ev):
        seen.append(ev.phase)
        if ev.phase == "inversion":
            raise ui.RunCancelled()

    with pytest.raises(ui.RunCancelled):
        engine.edit(image, points, case.mask, preset="shapes-gooddrag", settings=FAST, callback=cancel_at_inversion)
    assert seen.count("lora") == FAST["lora_steps"]
    pipe = engine.pipeline(ui.SHAPES_MODEL).pipe
    assert not getattr(pipe.unet, "peft_config", None)  # the LoRA adapter was removed
    assert not engine.run_lock.locked() and list((tmp_path / "results").iterdir()) == []
    out = engine.edit(image, points, case.mask, preset="shapes-dragdiffusion", settings=FAST)
    assert {p.name for p in out.folder.iterdir()} == EVERY_RESULT_FILE
    assert engine.pipeline(ui.SHAPES_MODEL).pipe is pipe  # cached


def test_engine_model_errors_are_one_line(tmp_path):
    engine = ui.Engine(tmp_path / "results", "cpu")
    with pytest.raises(GoodDragError) as err:
        engine.pipeline(str(tmp_path / "no-such-model"))
    assert "\n" not in str(err.value) and "no-such-model" in str(err.value)


# --------------------------------------------------------------- served app
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on a free loopback port, shipped model, CPU; (url, results folder)."""
    pytest.importorskip("gradio")
    base = tmp_path_factory.mktemp("ui")
    demo = ui.build_app(default_model=ui.SHAPES_MODEL, results_dir=base / "results", device="cpu",
                        lora_cache_dir=base / "lora", setting_defaults=FAST)
    _, url, _ = ui.launch_app(demo, "127.0.0.1", _free_port(), prevent_thread_lock=True, quiet=True)
    yield url, base / "results"
    demo.close()


def _shapes_case_files(folder: Path):
    from gooddrag.shapes.scenes import make_case

    case = make_case(0)
    Image.fromarray(case.image).save(folder / "input.png")
    Image.fromarray(case.mask.astype(np.uint8) * 255).save(folder / "mask.png")
    (h,), (t,) = case.handle_points.tolist(), case.target_points.tolist()
    return case, f"{h[0]:g},{h[1]:g}>{t[0]:g},{t[1]:g}"


def test_gradio_client_api_end_to_end(served, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    url, results = served
    case, points = _shapes_case_files(tmp_path)
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    edited_path, zip_path = client.predict(  # the call README shows
        image=handle_file(tmp_path / "input.png"), mask=handle_file(tmp_path / "mask.png"), points=points,
        preset="shapes-gooddrag", settings=json.dumps(FAST), api_name="/drag",
    )
    edited = np.asarray(Image.open(edited_path).convert("RGB")).astype(int)
    assert edited.shape == case.image.shape
    assert np.abs(edited - case.image)[case.mask].mean() > 1  # changed where it may change
    names = zipfile.ZipFile(zip_path).namelist()
    folder = Path(names[0]).parts[0]
    assert {Path(n).name for n in names} == EVERY_RESULT_FILE
    assert (results / folder / "run.json").is_file() and (results / f"{folder}.zip").is_file()
    record = json.loads((results / folder / "run.json").read_text())
    assert record["config"]["lora_steps"] == FAST["lora_steps"] and record["inputs"]["layout"] == "ui"
    # the results folder itself is not served: only what the app hands out
    import httpx

    for path in (results / folder / "run.json", results / f"{folder}.zip"):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code in (403, 404)

    # user errors come back as one clear message
    with pytest.raises(Exception, match="equals its target"):
        client.predict(handle_file(tmp_path / "input.png"), None, "3,4>3,4", api_name="/drag")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(Exception, match="is not an image this app reads"):
        client.predict(handle_file(tmp_path / "notes.txt"), None, points, api_name="/drag")
    with pytest.raises(Exception, match="nothing'?: no such file or folder"):
        client.predict(handle_file(tmp_path / "input.png"), None, points, "", "", "", str(tmp_path / "nothing"),
                       api_name="/drag")


def test_run_serves_the_page_offline(tmp_path):
    """``run(args)`` through ``python -m gooddrag.ui``: the page and the API info load."""
    pytest.importorskip("gradio")
    import httpx

    port = _free_port()
    env = os.environ | {"OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gooddrag.ui", "--port", str(port), "--device", "cpu",
         "--results-dir", str(tmp_path / "results")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                if page.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert page.status_code == 200 and "gooddrag" in page.text
        info = httpx.get(f"http://127.0.0.1:{port}/gradio_api/info", timeout=10).json()
        assert "/drag" in info["named_endpoints"]
        assert (tmp_path / "results").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([sys.executable, "-m", "gooddrag.ui", "--device", "nonsense"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: unknown device")


# ----------------------------------------------------------------- browser
def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_browser_upload_paint_click_run_download(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = served
    case, _ = _shapes_case_files(tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    outside = []
    t0 = time.perf_counter()
    laps = []

    def lap(what):
        laps.append(f"{what} {time.perf_counter() - t0:.1f}")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000}, accept_downloads=True)
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
            page.goto(url)
            page.locator("#upload").wait_for()
            with page.expect_file_chooser() as chooser:
                page.locator("#upload").click()
            chooser.value.set_files(str(tmp_path / "input.png"))
            page.get_by_text("Loaded input.png").wait_for(timeout=30_000)
            lap("uploaded")

            # paint a band across the middle of the canvas (the image sits centred in it)
            page.get_by_role("button", name="Brush", exact=True).click()
            box = page.locator("#mask-editor canvas").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            for dy in (-10, 10):  # few pointer moves: each costs 0.5-1.5 s of software WebGL
                page.mouse.move(cx - 180, cy + dy)
                page.mouse.down()
                page.mouse.move(cx + 180, cy + dy, steps=2)
                page.mouse.up()
            page.get_by_text("may change.").wait_for(timeout=30_000)
            page.get_by_text(" px (").wait_for(timeout=30_000)  # "Mask: N px (x%) may change."
            lap("painted")

            # handle then target, on the middle row, inside the band
            img = page.locator("#points-image img")
            ib = img.bounding_box()
            page.mouse.click(ib["x"] + ib["width"] * 0.40, ib["y"] + ib["height"] * 0.5)
            page.get_by_text("next click: its **target**".replace("**", "")).wait_for(timeout=30_000)
            page.mouse.click(ib["x"] + ib["width"] * 0.60, ib["y"] + ib["height"] * 0.5)
            page.get_by_text("1 pair(s)").wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "ui-ready.png"), full_page=True)
            lap("clicked")

            page.locator("#run").click()
            page.get_by_text("Done in").wait_for(timeout=120_000)
            page.screenshot(path=str(shots / "ui-finished-edit.png"), full_page=True)
            lap("ran")

            with page.expect_download() as info:
                page.locator("#download").click()
            zpath = tmp_path / "result.zip"
            info.value.save_as(zpath)
            files = {Path(n).name: n for n in zipfile.ZipFile(zpath).namelist()}
            assert set(files) == EVERY_RESULT_FILE
            with zipfile.ZipFile(zpath) as zf:
                mask = _pixels(zf.read(files["mask.png"]))[..., 0] > 0  # the painted mask, as used
                used_input = _pixels(zf.read(files["input.png"]))
                points = json.loads(zf.read(files["new_points.json"]))
            np.testing.assert_array_equal(used_input, case.image)
            assert 0.03 < mask.mean() < 0.6 and mask[30:34, 24:40].all()  # the band painted above
            (hx, hy), (tx, ty) = points["handle_points"][0], points["target_points"][0]
            assert abs(hy - 31.5) <= 1.5 and abs(ty - 31.5) <= 1.5 and 8 <= tx - hx <= 18  # clicked 0.4 -> 0.6

            src = page.locator("#result img").get_attribute("src")
            shown = _pixels(page.request.get(src).body())
            assert shown.shape == (512, 512, 3)
            result = shown[::8, ::8]  # the page shows the 64x64 result enlarged 8x
            assert np.abs(result - case.image.astype(int))[mask].mean() > 1

            page.locator("#show-final").click()  # the toggle shows the final handle positions
            page.wait_for_function(
                "s => document.querySelector('#result img')?.getAttribute('src') !== s", arg=src, timeout=30_000)
            page.screenshot(path=str(shots / "ui-final-points.png"), full_page=True)

            page.locator("#use-result").click()  # the result becomes the next input
            page.get_by_text("The result is the new input").wait_for(timeout=30_000)
            page.get_by_text("No points yet").wait_for(timeout=30_000)
            lap("checked")
        finally:
            browser.close()
    assert outside == [], f"the page fetched from outside: {outside}"
    print(f"browser test, seconds at each step: {', '.join(laps)}; screenshots in {shots}")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_browser_example_points_undo_clear_and_cancel(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, results = served
    before = set(results.iterdir()) if results.exists() else set()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            page.goto(url)
            page.locator("#examples").wait_for()
            page.locator("#examples button.thumbnail-item").first.click()  # the first shipped example
            page.get_by_text("Example shapes single #0").wait_for(timeout=30_000)
            page.get_by_text("1 pair(s): 34,23>46,23").wait_for(timeout=30_000)
            page.get_by_text("Mask: 576 px").wait_for(timeout=30_000)  # its mask is in the editor

            page.locator("#undo").click()
            page.get_by_text("handle 1 at (34, 23); next click: its target").wait_for(timeout=30_000)
            page.locator("#clear").click()
            page.get_by_text("No points yet").wait_for(timeout=30_000)
            page.locator("#run").click()
            page.get_by_text("Cannot run: No points").wait_for(timeout=30_000)

            # one click at a time: each click replaces the points image, and a click that lands while
            # the old image is being swapped out is not seen by the page (lost twice in full CI runs);
            # so wait for the new image to be in place and loaded before the next click
            img = page.locator("#points-image img")
            old_src = img.get_attribute("src")
            ib = img.bounding_box()
            page.mouse.click(ib["x"] + ib["width"] * 0.5, ib["y"] + ib["height"] * 0.35)
            page.get_by_text("next click: its target").wait_for(timeout=30_000)
            page.wait_for_function(
                "old => { const i = document.querySelector('#points-image img');"
                " return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
                arg=old_src, timeout=30_000)
            ib = img.bounding_box()
            page.mouse.click(ib["x"] + ib["width"] * 0.7, ib["y"] + ib["height"] * 0.35)
            page.get_by_text("1 pair(s)").wait_for(timeout=30_000)

            page.locator("#setting-lora_steps input").fill("2000")  # long enough to cancel
            page.locator("#setting-lora_steps input").press("Tab")
            page.locator("#run").click()
            page.get_by_text("Training the LoRA").first.wait_for(timeout=60_000)
            page.locator("#cancel").click()
            page.get_by_text("Run cancelled.").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "ui-cancelled.png"), full_page=True)

            # a model that cannot load: one clear line, and the preset follows the model
            page.locator("#model input").fill(str(tmp_path / "no-model"))
            page.locator("#model input").press("Enter")
            page.locator("#run").click()
            page.get_by_text("no-model': no such file or folder").first.wait_for(timeout=60_000)
            assert "Traceback" not in page.locator("#status").inner_text()
            assert page.locator("#preset input").input_value() == "GoodDrag"
        finally:
            browser.close()
    assert set(results.iterdir()) == before  # a cancelled run writes nothing
