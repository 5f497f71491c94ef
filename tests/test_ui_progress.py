"""The run's one progress figure and the run queue (gooddrag.ui.progress, gooddrag.ui.waiting)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from gooddrag.config import get_preset
from gooddrag.ui.progress import STAGES, RunProgress, status_html, wait_text
from gooddrag.ui.waiting import RunQueue


def _events(config, drag_stops_after: int | None = None):
    """The pipeline's event stream for ``config``: LoRA, inversion, then per timestep
    its drag rounds and its denoising step (AIDD)."""
    n = round(config.num_inference_steps * config.inversion_strength)
    R = config.drag_end_step * config.track_per_step
    ev = lambda *a, **k: SimpleNamespace(phase=a[0], step=a[1], total=a[2], timestep=k.get("timestep"))  # noqa: E731
    out = [ev("lora", i, config.lora_steps) for i in range(1, config.lora_steps + 1)]
    out += [ev("inversion", i, n) for i in range(1, n + 1)]
    rounds = 0
    for k in range(n):
        if k < config.drag_end_step:
            for _ in range(config.track_per_step):
                if drag_stops_after is not None and rounds >= drag_stops_after:
                    break
                rounds += 1
                out.append(ev("drag", rounds, R, timestep=k))
        out.append(ev("denoise", k + 1, n, timestep=k))
    return out


@pytest.mark.parametrize("stops", [None, 3])
def test_progress_never_goes_backwards_and_names_each_stage(stops):
    config = get_preset("shapes-gooddrag", lora_steps=6, num_inference_steps=20, drag_end_step=4, track_per_step=3)
    p = RunProgress(config)
    p.loading()
    seen = [(p.stage, p.fraction, p.text())]
    for ev in _events(config, stops):
        p.update(ev)
        seen.append((p.stage, p.fraction, p.text()))
    p.saving()
    seen.append((p.stage, p.fraction, p.text()))
    stages = [s for s, _, _ in seen]
    fractions = [f for _, f, _ in seen]
    assert stages == sorted(stages) and set(stages) == set(range(len(STAGES)))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    texts = [t for _, _, t in seen]
    assert any("LoRA training step 6 of 6" in t for t in texts)
    assert any("drag at timestep 4 of 4" in t for t in texts) == (stops is None)
    n = round(config.num_inference_steps * config.inversion_strength)
    assert any(f"denoise step {n} of {n}" in t for t in texts)
    assert texts[-1].startswith("Stage 5 of 5, saving")


def test_progress_without_timestep_field_and_with_a_cached_lora():
    config = get_preset("gooddrag", num_inference_steps=10, drag_end_step=2, track_per_step=2)
    p = RunProgress(config)
    p.update(SimpleNamespace(phase="inversion", step=1, total=5))  # no LoRA events: it was cached
    assert p.done["lora"] == config.lora_steps and p.fraction > 0.5  # the LoRA's share is done
    p.update(SimpleNamespace(phase="drag", step=3, total=4))  # an engine without StepEvent.timestep
    assert "drag at timestep 2 of 2" in p.text()
    p.started -= 10
    assert p.text().endswith("· 10 s") and p.remaining() is not None


def test_wait_text_and_status_html():
    assert wait_text(1, 12.4) == "Queued: 1 run ahead of yours (position 2); about 12 s to wait."
    assert "2 runs ahead" in wait_text(2, None) and "known once" in wait_text(2, None)
    html = status_html("a <b> & c", 0.5)
    assert "a &lt;b&gt; &amp; c" in html and 'value="50.0"' in html


def test_run_queue_is_first_come_first_served_with_estimates():
    q = RunQueue()
    first, second, third = q.join(), q.join(), q.join()
    assert (q.ahead(first), q.ahead(second), q.ahead(third)) == (0, 1, 2)
    assert q.estimate(1) is None  # nothing known yet
    config = get_preset("shapes-gooddrag")
    q.current = RunProgress(config, started=100.0)
    q.current.fraction = 0.25
    assert q.estimate(1, now=110.0) == pytest.approx(30.0)  # 10 s for a quarter: 30 s left
    assert q.estimate(2, now=110.0) == pytest.approx(30.0 + 40.0)
    heard = []
    done = threading.Event()

    def third_waits():
        q.wait(third, lambda ahead, eta: heard.append(ahead), poll=0.05)
        done.set()

    t = threading.Thread(target=third_waits)
    t.start()
    time.sleep(0.2)
    assert not done.is_set() and heard and set(heard) == {2}
    q.leave(first, seconds=20.0)
    time.sleep(0.2)
    assert not done.is_set() and heard[-1] == 1
    assert q.estimate(1) == pytest.approx(20.0)  # the mean of finished runs
    q.leave(second)  # a cancelled run leaves without a duration
    assert done.wait(2)
    t.join()
    assert q.ahead(third) == 0 and len(q) == 1
