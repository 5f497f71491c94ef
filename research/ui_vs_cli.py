"""The same edit through the web UI's page and through ``gooddrag edit``: wall and CPU seconds.

The shipped example "shapes single #0" with the shapes-gooddrag preset and 20 LoRA
steps (a fresh LoRA each time), one torch thread, twice each, interleaved. The CLI is
timed as a process (start, imports, model load, edit, result folder); the UI from the
Run click to "Done in" in headless chromium (/usr/bin/chromium), the server in this
process (its first run loads the model, the second finds it cached). CPU seconds
(user + system: the CLI child's, the server process's; chromium's own not counted)
depend far less than wall time on other jobs sharing the machine.

    python research/ui_vs_cli.py
"""
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

from gooddrag import ui  # noqa: E402

torch.set_num_threads(1)

ex = Path(__file__).resolve().parents[1] / "src" / "gooddrag" / "assets" / "examples" / "shapes-single-0"
root = Path(tempfile.mkdtemp(prefix="gd-cpu-"))

def cli(i):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["gooddrag", "edit", "--image", str(ex / "image.png"), "--mask", str(ex / "mask.png"),
                    "--points", "34,23>46,23", "--model", "shapes-64", "--device", "cpu", "--lora-steps", "20",
                    "--out", str(root / f"cli{i}"), "--no-progress", "--lora-cache-dir", str(root / f"lc{i}")],
                   check=True, capture_output=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

def page_run(url):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        p = b.new_page(viewport={"width": 1500, "height": 2000})
        p.goto(url)
        p.locator("#examples button.thumbnail-item").first.click()
        p.get_by_text("1 pair(s): 34,23>46,23").wait_for(timeout=60000)
        c0, t0 = os.times(), time.perf_counter()
        p.locator("#run").click()
        p.get_by_text("Done in").wait_for(timeout=900000)
        c1, wall = os.times(), time.perf_counter() - t0
        b.close()
    return wall, (c1.user - c0.user) + (c1.system - c0.system)

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
demo = ui.build_app(results_dir=root / "ui", device="cpu", lora_cache_dir=root / "ulc", setting_defaults={"lora_steps": 20})
_, url, _ = ui.launch_app(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
rows = []
for i in range(2):
    rows.append(("cli", *cli(i)))
    shutil.rmtree(root / "ulc", ignore_errors=True)
    rows.append(("ui-page", *page_run(url)))
    print(rows, flush=True)
demo.close()
for r in rows:
    print(f"{r[0]:8s} wall {r[1]:6.1f} s   cpu {r[2]:6.1f} s")
