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


# ------------------------------------------------------------------ FastDrag's inversion K/V cache
def decoder_self_attention_start(unet) -> int:
    """Index (counted down, mid, up) of the decoder's first self-attention layer: the layers FastDrag
    caches are that one and all after it (its ``updown == 'up'`` layers; SD1.5: 7 of 16)."""
    names = self_attention_layer_names(unet)
    return len(names) - sum(1 for n in names if n.startswith("up_blocks."))


class SelfAttentionCache:
    """Self-attention inputs of layers ``start_layer..`` recorded during DDIM inversion and replayed while
    denoising (FastDrag's K/V copy). Keyed by the timestep the UNet is called with, read by a forward
    pre-hook (one host read per UNet call).

    What is kept is each layer's input ``h`` (the hidden states its keys and values are computed from:
    K = to_k(h), V = to_v(h)); replaying ``h`` as ``encoder_hidden_states`` gives the recorded K and V
    with the layer's unchanged weights, in half the memory of K and V. ``entries[t][layer]``: (1, L, C).
    """

    def __init__(self, unet, start_layer: int):
        self.unet = unet
        self.layers = self_attention_layer_names(unet)[start_layer:]
        self.entries: dict[int, dict[str, torch.Tensor]] = {}
        self.timestep: int | None = None
        self.replays = 0
        """Layer calls that used a recorded entry (the tests count them)."""

    def _read_timestep(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.timestep = int(t.reshape(-1)[0]) if torch.is_tensor(t) else int(t)

    @contextlib.contextmanager
    def _installed(self, make) -> Iterator["SelfAttentionCache"]:
        previous = dict(self.unet.attn_processors)
        processors = dict(previous)
        for name in self.layers:
            processors[f"{name}.processor"] = make(name, previous[f"{name}.processor"])
        self.unet.set_attn_processor(processors)
        handle = self.unet.register_forward_pre_hook(self._read_timestep, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self.unet.set_attn_processor(previous)

    def record(self) -> contextlib.AbstractContextManager["SelfAttentionCache"]:
        """Within the block, every UNet call stores the chosen layers' inputs for its timestep."""
        return self._installed(lambda name, base: _CacheProcessor(self, name, base, replay=False))

    def replay(self) -> contextlib.AbstractContextManager["SelfAttentionCache"]:
        """Within the block, the chosen layers take their keys and values from the entry recorded at the
        same timestep (repeated to the batch); queries stay the current ones."""
        return self._installed(lambda name, base: _CacheProcessor(self, name, base, replay=True))


class _CacheProcessor:
    """Records (inversion) or replays (denoising) one self-attention layer's input for the cache."""

    def __init__(self, cache: SelfAttentionCache, name: str, base, replay: bool):
        self.cache, self.name, self.replay = cache, name, replay
        self.base = base if base is not None else AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        cache = self.cache
        if encoder_hidden_states is None and hidden_states.ndim == 3 and attn.group_norm is None:
            if not self.replay:
                cache.entries.setdefault(cache.timestep, {})[self.name] = hidden_states[:1].detach()
            else:
                try:
                    recorded = cache.entries[cache.timestep][self.name]
                except KeyError:
                    raise RuntimeError(f"no recorded self-attention input at timestep {cache.timestep} for "
                                       f"{self.name}: replay only timesteps the inversion ran") from None
                encoder_hidden_states = recorded.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
                cache.replays += 1
        return self.base(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
