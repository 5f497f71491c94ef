"""How far a finished run stopped short of its targets, in words for the status line."""

from __future__ import annotations

import numpy as np


def shortfall_limit_px(result) -> float:
    """How far (input px) a final handle may be from its target before the run counts as short:
    the config's stop distance (at least one cell), supervision cells converted to input pixels."""
    config = result.config
    (H, W), (h, w) = (result.image.height, result.image.width), result.working_size
    px_per_cell = max(W / (w * config.sup_res_scale), H / (h * config.sup_res_scale))
    return max(config.stop_distance, 1.0) * px_per_cell


def shortfall_message(result) -> str:
    """Words for the status when a run ended short of a target (``result``: a DragResult), or ""
    when every handle is within :func:`shortfall_limit_px` of its target."""
    config = result.config
    limit = shortfall_limit_px(result)
    dist = np.linalg.norm(np.asarray(result.handle_points) - np.asarray(result.target_points), axis=1)
    short = [(i, d) for i, d in enumerate(dist, 1) if d > limit]
    if not short:
        return ""
    why = {"no_change": "the tracking stalled", "budget": "the drag steps ran out"}.get(
        result.stats.stop_reason, "the drag stopped")
    which = "; ".join(f"handle {i} stopped {d:.1f} px short of its target" for i, d in short)
    tips = "try another seed, more drag steps (track per step)"
    if config.method != "gooddrag-plus":
        tips += ", or the GoodDrag+ method"
    return f"{which}: {why}. To get closer, {tips}."
