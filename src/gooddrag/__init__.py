"""gooddrag: drag editing of images with diffusion models (GoodDrag, ICLR 2025; DragDiffusion baseline)."""

from .config import METHODS, PRESETS, DragConfig, get_preset
from .errors import GoodDragError
from .pipeline import DragPipeline, DragResult, DragStats, StepEvent

__version__ = "0.1.0"

__all__ = [
    "DragConfig",
    "DragPipeline",
    "DragResult",
    "DragStats",
    "GoodDragError",
    "METHODS",
    "PRESETS",
    "StepEvent",
    "get_preset",
    "__version__",
]
