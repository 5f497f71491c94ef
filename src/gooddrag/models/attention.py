"""Mutual self-attention (MasaCtrl, Cao et al., ICCV 2023) through ``set_attn_processor``.

During denoising the batch is ``[source..., edited...]`` (two halves of equal
size). In the chosen self-attention layers the edited half's queries attend
to the keys and values of the source half, which keeps the unedited image's
identity and texture; the source half attends to itself as usual.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

_SECTION_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def self_attention_layer_names(unet) -> list[str]:
    """Module names of the UNet's self-attention layers in the order
    down blocks, mid block, up blocks (MasaCtrl's layer count).

    Found by type (``Attention`` without cross-attention), not by name.
    """
    names = [
        name
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and not module.is_cross_attention
    ]

    def key(name: str):
        section = name.split(".", 1)[0]
        numbers = tuple(int(n) for n in re.findall(r"\.(\d+)(?=\.|$)", name))
        return (_SECTION_ORDER.get(section, 3), numbers)

    return sorted(names, key=key)


class MutualSelfAttentionProcessor:
    """Self-attention where the edited half of the batch takes keys/values from the source half.

    ``hidden_states``: (2B, L, C) = [source (B), edited (B)]. The queries come
    from all 2B rows; keys and values from ``cat([source, source])``. When the
    two halves are equal this is plain self-attention.
    """

    def __init__(self, base=None):
        self.base = base if base is not None else AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is None and hidden_states.shape[0] % 2 == 0 and attn.group_norm is None:
            source = hidden_states.chunk(2)[0]
            encoder_hidden_states = torch.cat([source, source])
        return self.base(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


@contextlib.contextmanager
def mutual_self_attention(unet, start_layer: int) -> Iterator[list[str]]:
    """Within the block, self-attention layers ``start_layer..`` are mutual.

    Installs processors with ``unet.set_attn_processor`` and restores the
    previous ones on exit. Yields the names of the layers made mutual.
    """
    previous = dict(unet.attn_processors)
    chosen = self_attention_layer_names(unet)[start_layer:]
    processors = dict(previous)
    for name in chosen:
        processors[f"{name}.processor"] = MutualSelfAttentionProcessor()
    unet.set_attn_processor(processors)
    try:
        yield chosen
    finally:
        unet.set_attn_processor(previous)
