"""gooddrag: drag editing of images with diffusion models (GoodDrag, ICLR 2025; DragDiffusion baseline).

The public names are imported lazily so that ``gooddrag --help`` and the
command line's argument checks do not wait for torch and diffusers.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DragConfig": "config",
    "PRESETS": "config",
    "METHODS": "config",
    "get_preset": "config",
    "GoodDragError": "errors",
    "DragPipeline": "pipeline",
    "DragResult": "pipeline",
    "DragStats": "pipeline",
    "StepEvent": "pipeline",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'gooddrag' has no attribute {name!r}")
