"""The web UI's engine: model cache, one run at a time, cancellation, result folders.

:class:`Engine` loads pipelines by (model, device, dtype, VAE) and keeps the last
few; :meth:`Engine.edit` runs one drag edit while holding the run lock (a run that
is still stopping keeps the next one waiting) and writes the result folder that
``gooddrag edit`` writes, plus its zip. No gradio here: the page (:mod:`.page`)
drives it, and tests drive it directly.

No torch at import either: :mod:`.server` imports this module, and the command line
imports that to build ``gooddrag ui --help``. torch, the loaders and the pipeline are
imported in the methods that use them (each marked ``# heavy``).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.atomic import atomic_file
from ..errors import GoodDragError, ModelUnavailableError
from ..io.outputs import run_record, write_result_folder
from ..models.names import BUILTIN, SHAPES_MODEL
from .progress import RunProgress
from .state import check_run, make_config, points_to_text
from .waiting import RunQueue

logger = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = "gooddrag-ui-results"


class RunCancelled(Exception):
    """Raised from the step callback when the user pressed Cancel."""


def served_models(models: dict[str, str] | None = None) -> dict[str, str]:
    """The names the app serves -> what the loader reads: the built-in names first
    (shapes-64, the default hub id), then ``models`` (``gooddrag ui --model NAME=PATH_OR_ID``)."""
    out = {name: name for name in BUILTIN}
    out.update(models or {})
    return out


def result_name(now: datetime | None = None) -> str:
    """A fresh result folder name: local time and a short random id, e.g. ``20250101-120000-3fa9c1``."""
    return f"{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def zip_folder(folder: Path, dest: Path) -> Path:
    """Every file of ``folder`` into ``dest`` (a zip), under ``<folder name>/``. PNG and GIF
    files are stored as they are (already compressed: deflating them again took seconds at
    12 megapixels for a few percent), the rest deflated."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    stored = f.suffix.lower() in (".png", ".gif")
                    zf.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}",
                             compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)

    return atomic_file(dest, write)


# --------------------------------------------------------------------- engine
@dataclass
class EditOutput:
    result: Any  # DragResult
    folder: Path
    zip_path: Path
    config: Any
    queued_s: float = 0.0
    """Seconds the run waited in the queue before it started."""


@dataclass
class _Loaded:
    pipe: Any
    model: str
    dtype: str
    vae: str | None


class Engine:
    """Runs edits for the app: loads and caches pipelines by (model, device, dtype, vae),
    runs one edit at a time on its device (first come, first served: :attr:`queue`),
    writes result folders, and cancels runs.

    models: served name -> hub id or server path (:func:`served_models`); clients
    choose among the names only, unless ``allow_any_model`` (a single local user), when
    any hub id or path is taken. Without it, no message names a server path.
    """

    def __init__(self, results_dir: str | Path = DEFAULT_RESULTS_DIR, device: str = "auto", *,
                 lora_cache_dir: str | Path | None = None, max_cached: int = 2,
                 models: dict[str, str] | None = None, allow_any_model: bool = False):
        self.models = served_models(models)
        self.allow_any_model = allow_any_model
        self.queue = RunQueue(is_loaded=self.is_loaded)
        self.results_dir = Path(results_dir).resolve()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.lora_cache_dir = lora_cache_dir
        self.max_cached = max(1, max_cached)
        self._pipes: OrderedDict[tuple, _Loaded] = OrderedDict()
        self._load_lock = threading.Lock()
        self.run_lock = threading.Lock()
        """Held for a whole edit: a cancelled run that is still stopping keeps the next one waiting."""
        self._active: dict[str, tuple[threading.Event, threading.Event]] = {}
        self._points: dict[str, list[list[float]]] = {}
        self._points_lock = threading.Lock()
        self.display_dir = Path(tempfile.mkdtemp(prefix="gooddrag-ui-display-"))
        atexit.register(shutil.rmtree, self.display_dir, True)

    # -- pipelines
    def location(self, model: str | None) -> str:
        """A client's model choice -> what the loader reads; a name the app does not serve
        is refused (any hub id or path with ``allow_any_model``)."""
        name = (model or "").strip()
        if name in self.models:
            return self.models[name]
        if self.allow_any_model and name:
            return name
        raise GoodDragError(f"unknown model; choose one of: {', '.join(self.models)}")

    def is_loaded(self, model: str | None) -> bool:
        """Whether a pipeline of ``model`` (a served name) is loaded on this engine's device."""
        try:
            location = self.location(model)
        except GoodDragError:
            return False
        return any(key[0] == location for key in list(self._pipes))

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, name) of each served model; the label says when the server does not hold its
        files yet (a hub id not in its cache: the first run downloads it, which needs the internet)."""
        from ..models.loading import availability  # heavy: diffusers, transformers

        def label(name: str) -> str:
            where = availability(self.models[name])
            if where == "download":
                return f"{name} (not downloaded yet: the first run fetches it from the hub)"
            if where == "missing":
                return f"{name} (its files are missing on the server)"
            return name
        return [(label(name), name) for name in self.models]

    def pipeline(self, model: str, dtype: str = "fp32", vae: str | None = None) -> _Loaded:
        """The cached pipeline for (model, device, dtype, vae), loaded on first use.
        Loading errors become one-line GoodDragErrors (naming no server path unless
        ``allow_any_model``; the details go to the server log)."""
        from ..methods.pipeline import DragPipeline  # heavy: diffusers, transformers
        from ..models.loading import require_loadable  # heavy: diffusers, transformers

        location = self.location(model)
        vae = (vae or "").strip() or None
        if vae and not self.allow_any_model:
            raise GoodDragError("a separate VAE can only be chosen when the server allows any model")
        key = (location, self.device, dtype, vae)
        with self._load_lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            try:
                require_loadable(location)  # before a loaded model is dropped to make room
                while len(self._pipes) >= self.max_cached:  # make room first: two big models may not fit
                    self._pipes.popitem(last=False)
                    _free_device_memory()
                pipe = DragPipeline.from_pretrained(location, vae=vae, device=self.device, dtype=dtype)
            except Exception as err:  # noqa: BLE001 - any loading failure is shown as one line
                raise self._load_error(model, err) from None
            loaded = _Loaded(pipe, model.strip(), dtype, vae)
            self._pipes[key] = loaded
            return loaded

    def _load_error(self, model: str, err: Exception) -> GoodDragError:
        if isinstance(err, ModelUnavailableError) and not self.allow_any_model:  # names no path: a hub id
            return GoodDragError(f"cannot load model {model.strip()} on the server: it is not downloaded there "
                                 "and the hub cannot be reached (offline)")
        first = (str(err).strip().splitlines() or [""])[0][:300]
        if self.allow_any_model:
            if isinstance(err, GoodDragError):
                return err
            return GoodDragError(f"cannot load model {model!r}: {type(err).__name__}: {first}")
        logger.warning("cannot load model %r: %s: %s", model, type(err).__name__, first)
        return GoodDragError(f"cannot load model {model.strip()} on the server (the details are in its log)")

    # -- each browser session's points. Kept here, not in a gr.State: a State is sent
    # with the event, so a second click before the first one's answer would start
    # from the stale list and drop a point.
    def points(self, session: str) -> list[list[float]]:
        with self._points_lock:
            return [list(p) for p in self._points.get(session, [])]

    def update_points(self, session: str, change: Callable[[list], list]) -> list[list[float]]:
        """Apply ``change`` (old list -> new list) atomically; returns the new list."""
        with self._points_lock:
            new = [list(p) for p in change(self._points.get(session, []))]
            self._points[session] = new
            return [list(p) for p in new]

    def drop_session(self, session: str) -> None:
        with self._points_lock:
            self._points.pop(session, None)

    # -- cancellation, per browser session
    def start_run(self, session: str) -> tuple[threading.Event, threading.Event]:
        """Register a run of ``session``: (cancel flag its callback checks, set when it has ended)."""
        flags = (threading.Event(), threading.Event())
        self._active[session] = flags
        return flags

    def end_run(self, session: str, flags: tuple[threading.Event, threading.Event]) -> None:
        flags[1].set()
        if self._active.get(session) is flags:
            del self._active[session]

    def cancel(self, session: str, wait: float = 60.0) -> bool | None:
        """Ask the session's run to stop and wait until it has (the LoRA is removed, the
        device free). None: nothing was running; else whether it stopped within ``wait`` s."""
        flags = self._active.get(session)
        if flags is None:
            return None
        flags[0].set()
        return flags[1].wait(wait)

    # -- one edit
    def edit(
        self,
        image: Image.Image,
        points: Sequence[Sequence[float]],
        mask: np.ndarray | None,
        *,
        prompt: str = "",
        preset: str = "shapes-gooddrag",
        settings: dict[str, Any] | None = None,
        model: str = SHAPES_MODEL,
        dtype: str = "fp32",
        vae: str | None = None,
        source: str = "upload",
        callback: Callable | None = None,
        on_wait: Callable[[int, float | None], None] | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
        on_loaded: Callable[[Any], None] | None = None,
    ) -> EditOutput:
        """Check the inputs, wait for its turn in :attr:`queue` (``on_wait(ahead, estimate)``
        meanwhile; it may raise to give up), run the drag (LoRA cached or trained by the
        pipeline) and write the result folder (the files ``gooddrag edit`` writes, with the
        trajectory) and its zip. ``callback`` gets each pipeline step event;
        ``on_progress`` the run's :class:`RunProgress` after each event and stage."""
        config = make_config(preset, settings)
        handles, targets = check_run(image, points, mask, config)
        self.location(model)  # an unknown name is refused before queueing
        progress = RunProgress(config)
        report = on_progress or (lambda p: None)
        ticket = self.queue.join(model.strip(), progress.total_work)
        seconds = None
        joined = time.monotonic()
        try:
            self.queue.wait(ticket, on_wait)
            with self.run_lock:
                progress.started = time.monotonic()
                self.queue.current = progress
                progress.loading()
                report(progress)
                was_loaded = self.is_loaded(model)
                loaded = self.pipeline(model, dtype, vae)
                if not was_loaded:
                    self.queue.loaded(model.strip(), time.monotonic() - progress.started)
                self.queue.started(ticket)
                if on_loaded:
                    on_loaded(loaded.pipe)
                preset, config = self._fit_preset(loaded.pipe, preset, config, settings)
                result = self._run(loaded.pipe, image, handles, targets, mask, prompt, config, callback,
                                   progress, report)
                progress.saving()
                report(progress)
                out = self._write(loaded, image, points, mask, prompt, preset, config, result, source)
                seconds = time.monotonic() - ticket.started
                out.queued_s = progress.started - joined
        finally:
            self.queue.leave(ticket, seconds)
        logger.info("edit %s done in %.1f s", out.folder.name, progress.elapsed())
        return out

    @staticmethod
    def _fit_preset(pipe, preset, config, settings):
        """An SDXL, SD3 or FLUX model run with a plain SD preset gets its method's preset for that kind
        (same page settings): the SD layer choices do not fit its network. Other presets stay as chosen."""
        from ..methods import presets  # heavy: torch
        from ..models.backbone import SD  # heavy: torch

        kind = getattr(pipe, "kind", SD)
        if kind == SD or presets.family_of_preset(preset) != "sd":
            return preset, config
        preset = presets.for_model(config.method, None, kind)
        logger.info("%s model: running preset %s", kind, preset)
        return preset, make_config(preset, settings)

    def _run(self, pipe, image, handles, targets, mask, prompt, config, callback, progress, report):
        import torch  # heavy: torch

        def on_step(ev):
            progress.update(ev)
            report(progress)
            if callback is not None:
                callback(ev)

        return pipe(
            image, handles, targets, mask=mask, prompt=prompt or "", config=config,
            generator=torch.Generator().manual_seed(config.seed), lora_cache_dir=self.lora_cache_dir,
            return_trajectory=True, callback=on_step, progress=False,
        )

    def _write(self, loaded: _Loaded, image, points, mask, prompt, preset, config, result, source) -> EditOutput:
        """The result folder (run.json records the model's name, not where it lives) and its zip."""
        from ..methods.pipeline import image_sha256  # heavy: diffusers, transformers

        pipe = loaded.pipe
        name = result_name()
        folder = self.results_dir / name
        record = run_record(
            result=result, config=config, seed=config.seed,
            inputs={
                "layout": "ui", "source": source, "prompt": prompt or "",
                "image_sha256": image_sha256(image), "image_size": [image.width, image.height],
                "points": points_to_text(points), "preset": preset,
                "mask_pixels": None if mask is None else int(mask.sum()),
            },
            model={
                "model": loaded.model, "kind": pipe.source.kind if pipe.source else None, "vae": loaded.vae,
                "device": str(pipe.device), "dtype": loaded.dtype,
                "prediction_type": pipe.prediction_type,
            },
            argv=["gooddrag", "ui"],
        )
        write_result_folder(folder, input_image=image, result=result, mask=mask, run_record=record, overwrite=False)
        zip_path = zip_folder(folder, self.results_dir / f"{name}.zip")
        return EditOutput(result, folder, zip_path, config)

    def served_copy(self, path: Path, name: str | None = None) -> str:
        """A link (or copy) of a result file in the app's temporary folder, which gradio may
        hand to the browser wherever the results folder is; the results folder itself is
        never served."""
        dest = self.display_dir / (name or path.name)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
        return str(dest)

    def display_gif(self, folder: Path, scale: int) -> str | None:
        """The trajectory GIF enlarged for the page (the result folder keeps the original)."""
        gif = folder / "trajectory.gif"
        if not gif.is_file():
            return None
        if scale <= 1:  # the frames already fit 512 px
            return self.served_copy(gif, f"{folder.name}-trajectory.gif")
        import imageio.v3 as iio  # only to enlarge a GIF: 50 ms kept off gooddrag --help

        frames = iio.imread(gif, index=None)
        big = [np.repeat(np.repeat(np.asarray(f)[..., :3], scale, 0), scale, 1) for f in frames]
        out = self.display_dir / f"{folder.name}-trajectory.gif"
        iio.imwrite(out, big, extension=".gif", duration=400, loop=0)
        return str(out)


def _free_device_memory() -> None:
    """After a cached pipeline is dropped (once per eviction): collect the reference cycles that
    still hold its tensors, so their GPU blocks go back to torch's caching allocator. No
    emptying of the CUDA cache: the allocator itself releases cached blocks and retries before
    it reports out of memory, so the next model reuses them either way."""
    gc.collect()
