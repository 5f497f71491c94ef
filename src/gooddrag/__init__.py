"""gooddrag: drag editing of images with diffusion models (GoodDrag, ICLR 2025; DragDiffusion baseline).

The public names are imported lazily so that ``gooddrag --help`` and the
command line's argument checks do not wait for torch and diffusers.

The package is in layers, each a folder (imports run one way, pyproject.toml's contracts):
``core`` (math) -> ``models`` (backbones, loading, LoRA) -> ``methods`` (configs, presets, the
drag methods, the pipeline) -> ``io`` (samples, result folders, options) -> applications
(``shapes``, ``benchmark``, ``ui``) -> ``cli``.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DragConfig": "methods.config",
    "PRESETS": "methods.config",
    "METHODS": "methods.config",
    "get_preset": "methods.config",
    "GoodDragError": "errors",
    "DragPipeline": "methods.pipeline",
    "DragResult": "methods.pipeline",
    "DragStats": "methods.base",
    "StepEvent": "methods.base",
}

MOVED_MODULES = {
    "gooddrag.ddim": "gooddrag.core.ddim", "gooddrag.motion": "gooddrag.core.motion",
    "gooddrag.tracking": "gooddrag.core.tracking", "gooddrag.geometry": "gooddrag.core.geometry",
    "gooddrag.warp": "gooddrag.core.warp", "gooddrag.clock": "gooddrag.core.clock",
    "gooddrag.backbone": "gooddrag.models.backbone", "gooddrag.sdxl": "gooddrag.models.sdxl",
    "gooddrag.loading": "gooddrag.models.loading", "gooddrag.lora": "gooddrag.models.lora",
    "gooddrag.testing": "gooddrag.models.tiny", "gooddrag.testing_sdxl": "gooddrag.models.tiny_sdxl",
    "gooddrag.attention": "gooddrag.models.attention", "gooddrag.features": "gooddrag.models.features",
    "gooddrag.config": "gooddrag.methods.config", "gooddrag.presets": "gooddrag.methods.presets",
    "gooddrag.pipeline": "gooddrag.methods.pipeline", "gooddrag.samples": "gooddrag.io.samples",
    "gooddrag.outputs": "gooddrag.io.outputs", "gooddrag.options": "gooddrag.io.options",
    "gooddrag.shapes.bench": "gooddrag.shapes.benchmark",
}
"""Modules moved in 0.2 (folders by layer) -> where they are now. Importing an old name still works for
one release, with a DeprecationWarning; ``gooddrag.models`` (was the named-models module) is now the
models package: its names live in ``gooddrag.models.names``."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an import of a moved module's old name with the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=3)
        module = import_module(new)
        self._own_spec = module.__spec__  # the import system stamps the old name's spec on it next
        return module

    def exec_module(self, module):
        module.__spec__ = self._own_spec  # already executed at its new place: give it its own spec back


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'gooddrag' has no attribute {name!r}")
