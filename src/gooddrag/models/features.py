"""UNet decoder features through a forward hook.

The drag feature is the output of one decoder block, indexed in the list
``[mid_block, up_blocks[0], up_blocks[1], ...]`` (official index 3 = output of
``up_blocks[2]``, at latent resolution for SD1.5), resized bilinearly to the
supervision grid.

:class:`BlockOverride` does the opposite: it REPLACES one of those blocks' output (DragNoise
optimises the mid-block output, the UNet's bottleneck, and feeds it to the decoder in place of
what the mid block computed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GoodDragError


def feature_blocks(unet) -> list[torch.nn.Module]:
    """``[mid_block, *up_blocks]``: the blocks a feature index refers to."""
    return [unet.mid_block, *unet.up_blocks]


def feature_block(unet, block_index: int) -> torch.nn.Module:
    """Block ``block_index`` of :func:`feature_blocks` (an index out of range is a GoodDragError)."""
    blocks = feature_blocks(unet)
    if not 0 <= block_index < len(blocks):
        raise GoodDragError(
            f"feature_block={block_index} is out of range: this UNet has {len(blocks)} "
            f"decoder blocks (mid + {len(blocks) - 1} up), indices 0..{len(blocks) - 1}"
        )
    return blocks[block_index]


class FeatureHook:
    """Keeps the output of one UNet decoder block from the latest forward pass.

    Use as a context manager; the hook is removed on exit.
    """

    def __init__(self, unet, block_index: int):
        self.block = feature_block(unet, block_index)
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
            raise RuntimeError("no forward pass of the network has run inside this feature hook")
        return F.interpolate(self.output.float(), size=size, mode="bilinear")


class BlockOverride:
    """Replaces the output of one UNet decoder block (index as :class:`FeatureHook`'s) by ``value``
    in every forward pass while entered, through a forward hook that returns the replacement.

    ``value`` (B, C, h, w) must have the block output's shape; it is cast to the output's dtype
    (the UNet's), differentiably, so gradients of anything computed after the block reach
    ``value``. The block itself still runs; nothing flows back through it. The same tensor is read
    at every pass: an optimiser updating it in place is seen by the next pass. Hooks on the block
    registered before this one see its own output, hooks registered after it see ``value``.
    """

    def __init__(self, unet, block_index: int, value: torch.Tensor):
        self.block = feature_block(unet, block_index)
        self.block_index = block_index
        self.value = value
        self._handle = None

    def _hook(self, module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        if first.shape != self.value.shape:  # torch.Size compare: no device read
            raise GoodDragError(f"block {self.block_index} override: value of shape {tuple(self.value.shape)} "
                                f"for an output of shape {tuple(first.shape)}")
        new = self.value.to(first.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def __enter__(self) -> "BlockOverride":
        self._handle = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
