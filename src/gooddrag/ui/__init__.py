"""``gooddrag ui``: a Gradio web app for drag editing.

Upload an image (or pick an example), paint the editable region, click
handle/target points, press Run; the result folder is the one ``gooddrag
edit`` writes, downloadable as a zip. The app runs offline, on the shipped
shapes-64 model by default.

The package, bottom to top:

- :mod:`.state`: pure helpers (points, masks, uploads, display scaling, settings);
- :mod:`.views`: result-pane pictures (large ones scaled down);
- :mod:`.examples`: the example gallery;
- :mod:`.engine`: model cache, one run at a time, cancellation, result folders;
- :mod:`.handlers` and :mod:`.runs`: what the page's events do;
- :mod:`.page`: the layout and its wiring;
- :mod:`.server`: the ``gooddrag ui`` options and launching.

Importing the package imports neither gradio nor torch: the command line adds
the ``ui`` options from it. The names below are loaded on first use.
"""

from importlib import import_module

_EXPORTS = {
    "add_arguments": "server",
    "run": "server",
    "build_app": "server",
    "launch_app": "server",
    "DEFAULT_HOST": "server",
    "DEFAULT_PORT": "server",
    "Engine": "engine",
    "EditOutput": "engine",
    "RunCancelled": "engine",
    "DEFAULT_RESULTS_DIR": "engine",
    "Example": "examples",
    "shipped_examples": "examples",
    "SHAPES_MODEL": "state",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'gooddrag.ui' has no attribute {name!r}")
