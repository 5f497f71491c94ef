"""UNet decoder features through a forward hook.

The drag feature is the output of one decoder block, indexed in the list
``[mid_block, up_blocks[0], up_blocks[1], ...]`` (official index 3 = output of
``up_blocks[2]``, at latent resolution for SD1.5), resized bilinearly to the
supervision grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GoodDragError


def feature_blocks(unet) -> list[torch.nn.Module]:
    """``[mid_block, *up_blocks]``: the blocks a feature index refers to."""
    return [unet.mid_block, *unet.up_blocks]


class FeatureHook:
    """Keeps the output of one UNet decoder block from the latest forward pass.

    Use as a context manager; the hook is removed on exit.
    """

    def __init__(self, unet, block_index: int):
        blocks = feature_blocks(unet)
        if not 0 <= block_index < len(blocks):
            raise GoodDragError(
                f"feature_block={block_index} is out of range: this UNet has {len(blocks)} "
                f"decoder blocks (mid + {len(blocks) - 1} up), indices 0..{len(blocks) - 1}"
            )
        self.block = blocks[block_index]
        self.output: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, args, output):
        self.output = output[0] if isinstance(output, tuple) else output

    def __enter__(self) -> "FeatureHook":
        self._handle = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def features(self, size: tuple[int, int]) -> torch.Tensor:
        """Latest block output (B, C, h', w'), bilinearly resized to ``size`` (supervision grid), fp32."""
        if self.output is None:
            raise RuntimeError("no UNet forward pass has run inside this FeatureHook")
        return F.interpolate(self.output.float(), size=size, mode="bilinear")
