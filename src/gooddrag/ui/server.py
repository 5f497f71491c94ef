"""Serving the app: the ``gooddrag ui`` options, starting gradio, launching.

:func:`add_arguments` imports nothing heavy (the command line builds its parser
with it); :func:`build_app` and :func:`launch_app` import gradio when called.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..errors import GoodDragError
from ..models.names import DEFAULT_HUB_MODEL, SHAPES_MODEL, parse_model_spec
from .engine import DEFAULT_RESULTS_DIR
from .state import MAX_PIXELS, MAX_UPLOAD_MB

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def gradio():
    """Import gradio with analytics and telemetry off (set before the first import)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio as gr  # optional extra (gooddrag[ui]), imported after the settings above

    return gr


def build_app(*args, **kwargs):
    """:func:`gooddrag.ui.page.build_app`, importing gradio first (see :func:`gradio`)."""
    gradio()
    from .page import build_app as build  # imports gradio: only once the settings are in place

    return build(*args, **kwargs)


def launch_app(demo, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, share: bool = False,
               prevent_thread_lock: bool = False, quiet: bool = False):
    """Launch a :func:`build_app` app (uploads capped at its size limit, no analytics,
    nothing served from disk but what the app returns). Returns gradio's
    ``(app, local_url, share_url)``."""
    gradio()
    return demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
        quiet=quiet, max_file_size=demo.gooddrag_max_bytes, show_error=True, css=getattr(demo, "gooddrag_css", None),
    )


# ----------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``gooddrag ui`` options (imports nothing heavy)."""
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on; 0.0.0.0 serves the local network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs internet; anyone with the link can "
                             "use the app) (default: off)")
    parser.add_argument("--model", action="append", default=None, metavar="NAME=PATH_OR_ID",
                        help="a model the app offers, by name: NAME=hub id or server path (repeatable; a bare "
                             "hub id names itself); the first is selected at start. Clients see and choose "
                             f"names only. {SHAPES_MODEL} (shipped, offline) and {DEFAULT_HUB_MODEL} are "
                             f"always offered (default: {SHAPES_MODEL} selected)")
    parser.add_argument("--allow-any-model", action="store_true",
                        help="let the page and the API load any hub id or server path, and show paths in "
                             "errors: for a single local user only (default: names only)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR,
                        help="server folder for result folders and zips (default: ./%(default)s)")
    parser.add_argument("--lora-cache-dir", default=None,
                        help="where trained LoRAs are cached (default: $GOODDRAG_CACHE/lora or ~/.cache/gooddrag/lora)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="largest accepted image in pixels, width x height (default: %(default)s)")
    return parser


def run(args: argparse.Namespace, say=logger.warning) -> int:
    """Build and launch the app; blocks until interrupted. Returns the exit code."""
    from ..models.loading import resolve_device  # heavy: diffusers, transformers; keeps --help fast

    resolve_device(args.device)  # a bad device fails now, with the usual one-line error
    if args.port < 0 or args.port > 65535:
        raise GoodDragError(f"--port must be 0..65535, got {args.port}")
    try:
        import gradio  # noqa: F401 - the optional extra: a missing one is a one-line error
    except ImportError:
        raise GoodDragError("the web UI needs gradio: pip install 'gooddrag[ui]'") from None
    if args.share:
        say("warning: --share makes the app reachable by anyone with the link")
    models = dict(parse_model_spec(spec) for spec in args.model or [])
    if args.allow_any_model:
        say("warning: --allow-any-model lets every client load any server path or hub id")
        if args.share or args.host not in ("127.0.0.1", "localhost", "::1"):
            say("warning: --allow-any-model with --share or a non-loopback --host exposes the server's files")
    demo = build_app(
        default_model=next(iter(models), SHAPES_MODEL), results_dir=args.results_dir, device=args.device,
        lora_cache_dir=args.lora_cache_dir, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
        models=models, allow_any_model=args.allow_any_model,
    )
    say(f"results go to {demo.gooddrag_engine.results_dir}")
    try:
        launch_app(demo, args.host, args.port, share=args.share)
    except OSError as err:
        raise GoodDragError(f"cannot serve on {args.host}:{args.port}: {err}") from None
    return 0
