"""A newcomer's web UI session, timed: the first example, one's own 256 px picture, a 12 MP photo.

Starts ``gooddrag ui`` (the real command, offline, shipped shapes-64 model, CPU) in a
subprocess, drives Debian's Chromium through Playwright at 1280x900, and prints the
wall-clock seconds of each run (click -> "Done in"), what the status said, and what
the server printed (duplicated lines, tracebacks). Settings are the page's defaults.
The closing notes of the UI issues quote its output.

    python research/ui_session.py [--out DIR] [--skip-12mp]
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pictures(folder: Path) -> tuple[Path, Path]:
    """A 256 px picture of a disc on a gradient, and a 4000x3000 JPEG photo-like picture."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    small = np.stack([xx, yy, 255 - xx], -1).astype(np.uint8)
    small[(xx - 100) ** 2 + (yy - 128) ** 2 < 30**2] = (230, 200, 40)
    Image.fromarray(small).save(folder / "own-256.png")
    base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(base).resize((4000, 3000), Image.BICUBIC).save(folder / "photo-12mp.jpg", quality=90)
    return folder / "own-256.png", folder / "photo-12mp.jpg"


def run_and_time(page, label: str) -> dict:
    page.evaluate("() => { window.statusLog = []; const t = document.querySelector('#status');"
                  " new MutationObserver(() => window.statusLog.push([Math.round(performance.now()),"
                  " t.innerText])).observe(t, {subtree: true, childList: true, characterData: true}); }")
    t0 = time.monotonic()
    page.locator("#run").click()
    page.get_by_text("Done in").wait_for(timeout=600_000)
    wall = time.monotonic() - t0
    status = page.locator("#status-text").inner_text()
    log = page.evaluate("() => window.statusLog")
    saving = [text for _, text in log if "saving" in text]
    print(f"{label}: {wall:.1f} s wall from the click; status: {status}")
    if saving:
        print(f"  saving stage as shown: {' | '.join(dict.fromkeys(s.strip() for s in saving))}")
    return {"label": label, "wall_s": round(wall, 1), "status": status}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="ui-session", help="folder for the pictures, results and server log")
    ap.add_argument("--skip-12mp", action="store_true", help="leave out the 12 MP photo")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    own, photo = pictures(out)
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log_path = out / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "gooddrag.cli", "ui", "--port", str(port), "--device", "cpu",
                                   "--results-dir", str(out / "results")], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=out)
    url = f"http://127.0.0.1:{port}/"
    runs = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            deadline = time.monotonic() + 120
            while True:
                try:
                    page.goto(url)
                    break
                except Exception:  # noqa: BLE001 - the server is still starting
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            page.locator("#examples img").first.wait_for(timeout=60_000)
            for sel in ("#run", "#status"):
                box = page.locator(sel).bounding_box()
                print(f"{sel} at y {box['y']:.0f}-{box['y'] + box['height']:.0f} of 900 before scrolling")

            page.locator("#examples button.thumbnail-item").first.click()
            page.get_by_text("Example shapes single #0").wait_for(timeout=30_000)
            runs.append(run_and_time(page, "first example (shapes single #0)"))

            for label, path in (("own 256 px picture", own), ("12 MP photo (4000x3000 JPEG)", photo)):
                if args.skip_12mp and path == photo:
                    continue
                t0 = time.monotonic()
                with page.expect_file_chooser() as chooser:
                    page.locator("#upload").click()
                chooser.value.set_files(str(path))
                page.get_by_text(f"Loaded {path.name}").wait_for(timeout=300_000)
                img = page.locator("#points-image img")
                page.wait_for_function("() => { const i = document.querySelector('#points-image img');"
                                       " return i && i.complete && i.naturalWidth > 0; }", timeout=300_000)
                print(f"{label}: loaded in {time.monotonic() - t0:.1f} s")
                ib = img.bounding_box()
                old = img.get_attribute("src")
                page.mouse.click(ib["x"] + ib["width"] * 0.39, ib["y"] + ib["height"] * 0.5)
                page.get_by_text("next click: its target").wait_for(timeout=120_000)
                page.wait_for_function(
                    "old => { const i = document.querySelector('#points-image img');"
                    " return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
                    arg=old, timeout=120_000)
                ib = img.bounding_box()
                page.mouse.click(ib["x"] + ib["width"] * 0.55, ib["y"] + ib["height"] * 0.5)
                page.get_by_text("1 pair(s)").wait_for(timeout=120_000)
                runs.append(run_and_time(page, label))
                with page.expect_download() as info:
                    page.locator("#download-image").click()
                saved = out / f"download-{path.stem}.png"
                info.value.save_as(saved)
                with Image.open(saved) as im, Image.open(path) as src:
                    print(f"  Download edited.png: {im.size[0]}x{im.size[1]} (input {src.size[0]}x{src.size[1]})")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    lines = [line.rstrip("\n") for line in open(log_path)]
    repeated = {k: n for k, n in collections.Counter(lines).items() if n > 1 and k.strip()}
    stripped = collections.Counter(line.split(": ", 1)[-1] for line in lines if line.strip())
    print(f"server log: {len(lines)} lines, {sum('Traceback' in line for line in lines)} tracebacks, "
          f"identical lines repeated: {repeated or 'none'}, same text twice (with or without a level): "
          f"{ {k: n for k, n in stripped.items() if n > 1} or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
