"""The page: layout (top to bottom, as the user sees it) and the wiring of its events.

:func:`build_app` makes the engine and the handlers, lays out the page section by
section (inputs, settings, run, results, the hidden API components) and connects
each component's events to :class:`~gooddrag.ui.handlers.Handlers` and
:class:`~gooddrag.ui.runs.PageRuns`.
"""

# No ``from __future__ import annotations``: gradio reads annotations at run time.
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from ..models.names import SHAPES_MODEL
from ..io.outputs import GIF_MAX_SIDE
from .engine import DEFAULT_RESULTS_DIR, Engine
from .examples import Example, shipped_examples
from .handlers import Handlers
from .progress import status_html
from .runs import PageRuns
from .state import (
    BRUSH_SIZE,
    DISPLAY_SIDE,
    MASK_COLOR,
    MAX_PIXELS,
    MAX_UPLOAD_MB,
    method_choices,
    default_preset,
    describe_mask,
    describe_points,
)
from .views import draw_overlay

INSTRUCTIONS = """## gooddrag: drag editing with diffusion models

1. Upload an image or pick an example.
2. Paint the region that may change (optional: no mask = everything may change).
3. Click a **handle** point, then its **target**; repeat for more pairs.
4. Run. Runs queue, one at a time; a queued run shows its place and the expected wait.
"""
CSS = """
/* The editor's own "Clear canvas" would remove the picture: the Clear mask button replaces it. */
#mask-editor button[aria-label="Clear canvas"], #mask-editor button[title="Clear canvas"] { display: none !important; }
.gd-status { padding: 4px 0; }
.gd-error #status-text { color: var(--error-text-color, #b91c1c); font-weight: 600; }
.gd-queued #status-text { font-weight: 600; }
/* A narrow window: the examples wrap onto two columns instead of running off the right edge. */
@media (max-width: 640px) {
  #examples .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #examples, #examples .grid-wrap { height: auto !important; max-height: none !important; }
}
"""
EDITOR_HEIGHT = POINTS_HEIGHT = 480
"""Pixels: low enough that Run and the status, under the points image, show without scrolling at 1280x900."""
ANY_MODEL_NOTE = ("**Free model entry is on** (`--allow-any-model`): the model box takes any hub id or path "
                  "on this server. Use it for a single local user only.")


def build_app(
    default_model: str = SHAPES_MODEL,
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    device: str = "auto",
    *,
    lora_cache_dir: str | Path | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
    examples: Sequence[Example] | None = None,
    setting_defaults: dict[str, Any] | None = None,
    models: dict[str, str] | None = None,
    allow_any_model: bool = False,
):
    """The Gradio app (a ``gr.Blocks``, queued: one run at a time on ``device``).

    default_model: the name selected at start (``"shapes-64"``, shipped, offline);
    models: the served names -> hub id or server path, besides the built-in
    shapes-64 and default hub id; clients choose among the names only, unless
    ``allow_any_model`` (a single local user: free entry, messages may name paths);
    results_dir: where result folders and zips go (names are generated);
    examples: the gallery (default :func:`shipped_examples`); setting_defaults:
    values shown in the settings boxes instead of the preset's (for demos and tests).
    The engine is ``app.gooddrag_engine``.
    """
    engine = Engine(results_dir, device, lora_cache_dir=lora_cache_dir, models=models,
                    allow_any_model=allow_any_model)
    engine.location(default_model)  # the model selected at start must be one the app serves
    max_bytes = int(max_upload_mb * 2**20)
    handlers = Handlers(engine, default_model=default_model, max_bytes=max_bytes, max_pixels=max_pixels,
                        examples=shipped_examples() if examples is None else examples,
                        setting_defaults=setting_defaults)
    start_preset = default_preset(default_model)
    # delete_cache: gradio's copies of served files older than a day go, checked hourly
    with gr.Blocks(title="gooddrag", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(INSTRUCTIONS)
        page = SimpleNamespace(input_state=gr.State(None), result_state=gr.State(None))
        _input_section(page, handlers.examples)
        _settings_section(page, handlers, default_model, start_preset, engine)
        _results_section(page)
        _api_components(page)
        _wire(page, handlers, PageRuns(engine), device)
        demo.unload(handlers.on_unload)
    demo.queue(default_concurrency_limit=1)
    demo.gooddrag_engine = engine
    demo.gooddrag_max_bytes = max_bytes
    demo.gooddrag_css = CSS
    return demo


# ------------------------------------------------------------------- layout
def _input_section(page, examples: list[Example]) -> None:
    """Upload, examples and the mask editor on the left; the points image, Run and the
    status on the right (in view without scrolling at 1280x900)."""
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                page.upload = gr.UploadButton("Upload image", file_types=["image"], type="filepath",
                                              elem_id="upload", size="md")
            page.gallery = gr.Gallery(
                value=[(draw_overlay(ex.image, ex.points, max(1, 128 // max(ex.image.size)), ex.mask), ex.name)
                       for ex in examples],
                label=f"Examples ({len(examples)}: click one)", columns=max(1, len(examples)), rows=1,
                height=150, allow_preview=False, interactive=False, elem_id="examples", buttons=[], format="png",
            ) if examples else None
            gr.Markdown("**Mask**: paint the region that may change (brush; eraser to remove). "
                        "The picture stays as it is.", elem_id="mask-label")
            page.editor = gr.ImageEditor(
                show_label=False, sources=(), transforms=(), layers=False, type="numpy", image_mode="RGBA",
                brush=gr.Brush(colors=[MASK_COLOR], color_mode="fixed", default_size=BRUSH_SIZE),
                eraser=gr.Eraser(), height=EDITOR_HEIGHT, elem_id="mask-editor", format="png",
                # The editor may place a given layer (an example's mask) before its background
                # has loaded, centred in a canvas of this size: make it the examples' display size.
                canvas_size=(DISPLAY_SIDE, DISPLAY_SIDE),
            )
            with gr.Row():
                page.mask_md = gr.Markdown(describe_mask(None), elem_id="mask-info")
                page.clear_mask_btn = gr.Button("Clear mask", size="sm", elem_id="clear-mask", scale=0)
        with gr.Column(scale=1):
            page.points_img = gr.Image(
                label="Points: click a handle (red), then its target (blue)", interactive=False,
                type="pil", format="png", elem_id="points-image", height=POINTS_HEIGHT, buttons=["fullscreen"],
            )
            page.points_md = gr.Markdown(describe_points([]), elem_id="points-info")
            with gr.Row():
                page.undo_btn = gr.Button("Undo last point", size="md", elem_id="undo")
                page.clear_btn = gr.Button("Clear points", size="md", elem_id="clear")
            with gr.Row():
                page.run_btn = gr.Button("Run", variant="primary", elem_id="run")
                page.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", interactive=False)
            page.status = gr.HTML(status_html("Ready."), elem_id="status")


def _number(name: str, typ, value, info: str):
    label = {"lam": "lambda"}.get(name, name).replace("_", " ")
    if getattr(typ, "choices", None):  # a setting with named values (warp fill)
        return gr.Dropdown(choices=list(typ.choices), value=value, label=label, info=info,
                           elem_id=f"setting-{name}", min_width=150)
    return gr.Number(value=value, label=label, info=info, precision=0 if typ is int else None,
                     elem_id=f"setting-{name}", min_width=150)


def _settings_section(page, handlers: Handlers, default_model: str, start_preset: str, engine: Engine) -> None:
    """Model, preset and prompt; the main settings; the advanced ones in an accordion."""
    free = engine.allow_any_model
    with gr.Row():
        with gr.Column(scale=1):
            page.model_box = gr.Dropdown(
                choices=engine.model_choices(), value=default_model, allow_custom_value=free, label="Model",
                info=f"{SHAPES_MODEL}: the small offline demo model (64x64 pictures of shapes); "
                     + ("or any hub id or path on this server" if free else "the server offers these names"),
                elem_id="model",
            )
            if free:
                gr.Markdown(ANY_MODEL_NOTE, elem_id="any-model-note")
            page.preset_box = gr.Dropdown(
                choices=method_choices(default_model), value=start_preset, label="Method",
                info="GoodDrag (AIDD), GoodDrag+ (ours) or the DragDiffusion baseline; each runs with the "
                "settings made for the selected model", elem_id="preset",
            )
            page.prompt_box = gr.Textbox(label="Prompt", info="text for the model (empty by default)",
                                         elem_id="prompt")
        with gr.Column(scale=2):
            page.boxes = {}
            with gr.Row():
                for name, typ, text, is_main in handlers.spec:
                    if is_main:
                        page.boxes[name] = _number(name, typ, handlers.preset_value(start_preset, name), text)
            gr.Markdown("Each box starts at the selected method's default for this model; choosing a method "
                        "resets them.",
                        elem_id="settings-note")
            with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                with gr.Row():
                    for name, typ, text, is_main in handlers.spec:
                        if not is_main:
                            page.boxes[name] = _number(name, typ, handlers.preset_value(start_preset, name), text)
                with gr.Row():
                    page.vae_box = gr.Textbox(label="VAE", info="separate VAE: hub id or path, e.g. "
                                              "stabilityai/sd-vae-ft-mse (default: the model's)", visible=free)
                    page.dtype_box = gr.Dropdown(["fp32", "fp16", "bf16"], value="fp32", label="dtype",
                                                 info="weights; fp16 needs a GPU")


def _results_section(page) -> None:
    """Result with live preview, before/after, trajectory; download and reuse."""
    with gr.Row():
        with gr.Column():
            page.result_img = gr.Image(label="Result (live preview while running)", interactive=False, type="pil",
                                       format="png", elem_id="result", height=520, buttons=["fullscreen"])
            page.show_final = gr.Checkbox(label="Show handles, targets and final handle positions (yellow)",
                                          value=False, elem_id="show-final")
        with gr.Column():
            page.slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="before-after",
                                         max_height=520)
        with gr.Column():
            page.gif = gr.Image(label=f"Trajectory (input, one frame per drag timestep, result; frames at most "
                                      f"{GIF_MAX_SIDE} px)", type="filepath", interactive=False, elem_id="trajectory",
                                height=520)
    with gr.Row():
        page.download = gr.DownloadButton("Download result folder (.zip)", interactive=False, elem_id="download")
        page.download_image = gr.DownloadButton("Download edited.png", interactive=False, elem_id="download-image")
        page.use_result = gr.Button("Use result as new input", elem_id="use-result", interactive=False)


def _api_components(page) -> None:
    """Hidden components of the API endpoint /drag (gradio_client)."""
    with gr.Group(visible=False):
        page.api_inputs = [gr.File(label="image", type="filepath"), gr.File(label="mask", type="filepath"),
                           gr.Textbox(label="points"), gr.Textbox(label="prompt", value=""),
                           gr.Textbox(label="preset", value=""), gr.Textbox(label="settings", value=""),
                           gr.Textbox(label="model", value="")]
        page.api_outputs = [gr.Image(label="edited", type="pil", format="png"), gr.File(label="result zip")]
        page.api_btn = gr.Button("drag")


# ------------------------------------------------------------------- events
SCROLL_TO_TOP = "() => { window.scrollTo({top: 0, behavior: 'instant'}); }"
MAX_WAITING = 16
"""Runs (page and API together) that may wait in the engine's queue; gradio queues any more."""


def _wire(page, h: Handlers, runs: PageRuns, device: str) -> None:
    # Runs wait in the engine's own queue (first come, first served, page and API alike),
    # which tells each waiting run its place; the engine runs one at a time.
    concurrency = dict(concurrency_limit=MAX_WAITING, concurrency_id=f"gooddrag-run-{device}")
    light = dict(concurrency_limit=None, show_progress="hidden", api_visibility="private")
    # Events that change the points run one at a time in click order, every click counted.
    ordered = dict(concurrency_limit=1, concurrency_id="gooddrag-points", show_progress="hidden",
                   trigger_mode="multiple", api_visibility="private")
    input_outputs = [page.input_state, page.editor, page.points_img, page.points_md, page.status, page.mask_md]
    page.upload.upload(h.on_upload, [page.upload, page.model_box], input_outputs, **ordered)
    if page.gallery is not None:
        page.gallery.select(h.on_example, page.model_box, [*input_outputs, page.prompt_box], **ordered)
    point_inputs, point_outputs = [page.input_state, page.editor], [page.points_img, page.mask_md, page.points_md]
    page.points_img.select(h.on_click, point_inputs, point_outputs, **ordered)
    page.undo_btn.click(h.on_undo, point_inputs, point_outputs, **ordered)
    page.clear_btn.click(h.on_clear, point_inputs, point_outputs, **ordered)
    # in the same one-at-a-time line as Clear mask and the clicks: a stroke's report sent before
    # Clear mask is handled before it, never after (it then showed a mask the editor no longer had)
    page.editor.change(h.on_mask_change, point_inputs, [page.points_img, page.mask_md],
                       **(ordered | dict(trigger_mode="always_last")))
    mask_outputs = [page.editor, page.points_img, page.mask_md]
    page.clear_mask_btn.click(h.on_clear_mask, page.input_state, mask_outputs, **ordered)
    page.editor.clear(h.on_clear_mask, page.input_state, mask_outputs, **ordered)
    page.model_box.change(h.on_model_change, [page.model_box, page.preset_box, page.input_state],
                          [page.preset_box, page.status], **light)
    page.upload.click(h.on_upload_click, None, page.status, **light)
    page.preset_box.change(h.on_preset_change, page.preset_box, list(page.boxes.values()), **light)
    page.show_final.change(h.on_show_points, [page.show_final, page.result_state], page.result_img, **light)
    page.use_result.click(h.on_use_result, [page.result_state, page.editor], input_outputs, **ordered).then(
        None, None, None, js=SCROLL_TO_TOP)
    run_event = page.run_btn.click(
        runs.run, [page.input_state, page.editor, page.model_box, page.preset_box, page.prompt_box, page.vae_box,
                   page.dtype_box, page.show_final],
        [page.status, page.result_img, page.slider, page.gif, page.download, page.download_image, page.result_state,
         page.use_result, page.cancel_btn],
        inputs_kwargs=page.boxes, api_visibility="private", show_progress="hidden", **concurrency,
    )
    page.cancel_btn.click(h.on_cancel, None, [page.status, page.cancel_btn], cancels=[run_event],
                          api_visibility="private", concurrency_limit=None)
    page.api_btn.click(h.api_drag, page.api_inputs, page.api_outputs, api_name="drag", **concurrency)
