"""The run's one progress figure and the run queue (gooddrag.ui.progress, gooddrag.ui.waiting)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from gooddrag.methods.config import get_preset
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
    assert "2 runs ahead" in wait_text(2, None) and "wait unknown until a run" in wait_text(2, None)
    html = status_html("a <b> & c", 0.5)
    assert "a &lt;b&gt; &amp; c" in html and 'value="50.0"' in html


def test_run_queue_is_first_come_first_served_with_estimates():
    loaded = {"a", "b"}
    q = RunQueue(is_loaded=lambda m: m in loaded)
    first, second, third = q.join("a", 100), q.join("a", 50), q.join("b", 10)
    assert (q.ahead(first), q.ahead(second), q.ahead(third)) == (0, 1, 2)
    assert q.estimate(first) == 0.0  # at the front
    assert q.estimate(second) is None  # no run on "a" has finished: unknown, not a guess
    q.started(first, now=100.0)
    heard = []
    done = threading.Event()

    def third_waits():
        q.wait(third, lambda ahead, eta: heard.append((ahead, eta)), poll=0.05)
        done.set()

    t = threading.Thread(target=third_waits, daemon=True)  # daemon: a failed assert must not hang the run
    t.start()
    time.sleep(0.2)
    assert not done.is_set() and heard and {h[0] for h in heard} == {2} and heard[-1][1] is None
    q.leave(first, seconds=20.0)  # 100 units in 20 s on "a": 0.2 s a unit
    assert q.predict("a", 50) == pytest.approx(10.0)  # one run: 0.2 s a unit
    q.started(second, now=200.0)
    assert q.estimate(third, now=204.0) == pytest.approx(6.0)  # 50 units at 0.2 s, 4 s of it done
    other = q.join("a", 25)
    assert q.estimate(other, now=204.0) is None  # "b" (third) has no finished run yet
    measured = q.join("b", 10)
    q.leave(measured, seconds=5.0)  # a run on "b" finished: 0.5 s a unit
    assert q.estimate(other, now=204.0) == pytest.approx(6.0 + 5.0)
    q.loaded("b", 3.0)
    assert q.estimate(other, now=204.0) == pytest.approx(6.0 + 5.0)  # "b" is loaded: no loading time
    loaded.discard("b")
    assert q.estimate(other, now=204.0) == pytest.approx(6.0 + 3.0 + 5.0)  # not loaded: it counts
    assert q.estimate(third, now=230.0) == 0.0  # ran longer than expected: no negative wait
    time.sleep(0.2)
    assert not done.is_set() and heard[-1][0] == 1
    q.leave(second)  # a cancelled run leaves without a duration
    assert done.wait(2)
    t.join()
    assert q.ahead(third) == 0 and len(q) == 2 and q.predict("a", 100) == pytest.approx(20.0)
    fit = RunQueue()
    for work, seconds in ((100, 2.0), (300, 4.0)):
        fit.leave(fit.join("m", work), seconds=seconds)
    assert fit.predict("m", 200) == pytest.approx(3.0)  # 1 s a run + 0.01 s a unit, not 200 x 0.015


def test_the_page_keeps_counting_while_a_run_sends_no_news():
    """Saving a large picture sends no events for seconds: the status line is sent again each
    TICK with the elapsed time still counting (it froze for ~20 s at 12 MP, issue P2 item 4)."""
    import queue as queue_mod

    pytest.importorskip("gradio")
    from PIL import Image

    from gooddrag.ui import runs

    p = RunProgress(get_preset("shapes-gooddrag"), started=time.monotonic() - 10)
    p.saving()
    events = queue_mod.Queue()
    events.put(("progress", p, p.step_kind))
    alive = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    alive.start()
    threading.Timer(2.7, lambda: events.put(("error", runs.RunCancelled()))).start()
    page = runs.PageRuns(engine=None)
    sent = [out[0] for out in page._report(Image.new("RGB", (8, 8)), events, alive, False, time.monotonic(), None)]
    saving = [s for s in sent if isinstance(s, str) and "saving" in s]
    seconds = [int(s.split("· ")[-1].split(" s")[0]) for s in saving]
    assert len(saving) >= 3 and seconds == sorted(seconds) and seconds[-1] - seconds[0] >= 2, saving
    assert "Run cancelled." in sent[-1]


def test_a_stage_is_not_named_twice():
    p = RunProgress(get_preset("shapes-gooddrag"), started=time.monotonic())
    p.loading()
    assert p.text().startswith("Stage 1 of 5, loading the model · 0% · ")  # was "loading the model: loading the model"
    p.saving()
    assert "Stage 5 of 5, saving: writing the result folder · " in p.text()
