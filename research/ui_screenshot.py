"""The README's web UI picture: the page after a finished edit of the first example with GoodDrag+
(shipped shapes-64 model, the page's default settings, CPU), in Debian's chromium at 1280 px wide.

    python research/ui_screenshot.py --out docs/images/ui-finished-edit.png
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from playwright import sync_api

    from gooddrag import ui
    from gooddrag.methods import presets
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        demo = ui.build_app(default_model=ui.SHAPES_MODEL, results_dir=Path(tmp) / "results", device="cpu",
                            lora_cache_dir=Path(tmp) / "lora")
        _, url, _ = ui.launch_app(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#examples button.thumbnail-item").first.click()
            page.get_by_text("1 pair(s): 34,23>46,23").wait_for(timeout=30_000)
            page.locator("#preset input").click()
            page.get_by_role("option", name=presets.METHOD_LABELS["gooddrag-plus"], exact=True).click()
            page.locator("#run").click()
            page.get_by_text("Done in").wait_for(timeout=180_000)
            page.wait_for_timeout(1500)  # the result panes finish drawing
            page.screenshot(path=str(args.out), full_page=True)
            print(page.locator("#status").inner_text())
            browser.close()
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
