"""Features and mutual attention on diffusion transformers (SD3/SD3.5 MMDiT, FLUX.1).

* Features (docs/method.md, "Flow-matching backbones"): the image tokens a transformer block outputs
  (``output[1]`` of SD3's ``JointTransformerBlock`` and FLUX's ``FluxTransformerBlock``, both return
  ``(text, image)``), (B, N, C) with N = h' w' tokens in row-major order, reshaped to the token grid
  (B, C, h', w') and resized bilinearly to the supervision grid like a UNet block's output.
* Mutual attention (MasaCtrl restated for joint attention): for a batch ``[source, edited]`` the
  edited half's queries, image and text, attend to the SOURCE half's image keys and values and to
  their own text keys and values; the source half is unchanged. Installed with
  ``set_attn_processor`` and restored on exit; nothing assigns a module's ``forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from ..errors import GoodDragError
from .features import FeatureHook


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _source_kv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both halves of the batch take the source half's keys and values (dim 0 = [source, edited])."""
    half = k.shape[0] // 2
    return torch.cat([k[:half]] * 2), torch.cat([v[:half]] * 2)


class MutualJointAttnProcessor:
    """SD3's joint attention (layout ``[image, text]``, image projected by ``to_out``, text by
    ``to_add_out``; without text, SD3.5's image-only ``attn2``) where the edited half of an even batch
    attends to the source half's image keys/values. Odd batches go to ``base`` unchanged."""

    def __init__(self, base):
        self.base = base

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch = hidden_states.shape[0]
        if batch % 2:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        q, k, v = (_heads(f(hidden_states), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))  # (B, H, N, d)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        n = q.shape[2]
        k, v = _source_kv(k, v)
        if encoder_hidden_states is not None:  # the text stream, its own keys and values
            cq, ck, cv = (_heads(f(encoder_hidden_states), attn.heads)
                          for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
            q, k, v = (torch.cat(pair, dim=2) for pair in ((q, cq), (k, ck), (v, cv)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2).to(q.dtype)  # (B, N+L, H*d)
        image = attn.to_out[1](attn.to_out[0](out[:, :n]))
        if encoder_hidden_states is None:
            return image
        text = out[:, n:] if attn.context_pre_only else attn.to_add_out(out[:, n:])
        return image, text


class MutualFluxAttnProcessor:
    """FLUX's attention (layout ``[text, image]``, RoPE on q and k) with the edited half attending to
    the source half's image keys/values. Double blocks pass the text stream separately; single
    blocks pass the joint sequence, whose text length ``text_length()`` gives (read from the
    transformer's inputs by :func:`mutual_joint_attention`)."""

    def __init__(self, base, text_length: Callable[[], int]):
        self.base = base
        self.text_length = text_length

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if hidden_states.shape[0] % 2 or attention_mask is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        q, k, v = (f(hidden_states).unflatten(-1, (-1, attn.head_dim)) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)  # (B, L, H, d)
        text = 0
        if encoder_hidden_states is not None:
            cq, ck, cv = (f(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
                          for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            q = torch.cat([attn.norm_added_q(cq), q], dim=1)
            k = torch.cat([attn.norm_added_k(ck), k], dim=1)
            v = torch.cat([cv, v], dim=1)
            text = encoder_hidden_states.shape[1]
        else:
            text = self.text_length()
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        ks, vs = _source_kv(k[:, text:], v[:, text:])
        k, v = torch.cat([k[:, :text], ks], dim=1), torch.cat([v[:, :text], vs], dim=1)
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
        out = out.flatten(2).to(q.dtype)  # (B, L, H*d)
        if encoder_hidden_states is None:
            return out
        image = attn.to_out[1](attn.to_out[0](out[:, text:].contiguous()))
        return image, attn.to_add_out(out[:, :text].contiguous())


def attention_layer_names(transformer) -> list[str]:
    """The transformer's attention layers in its own order (``attn_processors``: block 0's ``attn``,
    SD3.5's ``attn2``, ..., then FLUX's single blocks): what ``mutual_attention_start_layer`` counts."""
    return [name.removesuffix(".processor") for name in transformer.attn_processors]


@contextlib.contextmanager
def mutual_joint_attention(transformer, start_layer: int, flux: bool) -> Iterator[list[str]]:
    """Within the block, attention layers ``start_layer..`` are mutual (SD3 or, ``flux``, FLUX
    processors). Yields the names of the layers made mutual; the previous processors come back on exit."""
    if getattr(transformer, "fused_projections", False) or any(
            getattr(m, "fused_projections", False) for m in transformer.modules()):
        raise GoodDragError("mutual attention needs unfused q/k/v projections (do not fuse_qkv_projections)")
    previous = dict(transformer.attn_processors)
    names = list(previous)[start_layer:]
    seen = {"text": 0}
    handle = None
    if flux:  # single blocks see [text, image] as one sequence: remember the text length of this call
        handle = transformer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.update(text=kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    make = (lambda base: MutualFluxAttnProcessor(base, lambda: seen["text"])) if flux else MutualJointAttnProcessor
    transformer.set_attn_processor(previous | {name: make(previous[name]) for name in names})
    try:
        yield [name.removesuffix(".processor") for name in names]
    finally:
        transformer.set_attn_processor(previous)
        if handle is not None:
            handle.remove()


class TokenFeatureHook(FeatureHook):
    """Keeps the image tokens output by one transformer block in the latest forward pass, as a map
    (:class:`gooddrag.models.features.FeatureHook`, whose context manager and ``features`` it keeps).

    ``grid()`` gives that pass's token grid (h', w') (the denoiser knows it from the latent's size).
    """

    def __init__(self, blocks: torch.nn.ModuleList, block_index: int, grid: Callable[[], tuple[int, int]]):
        if not 0 <= block_index < len(blocks):
            raise GoodDragError(f"feature_block={block_index} is out of range: this transformer has {len(blocks)} "
                                f"joint blocks, indices 0..{len(blocks) - 1}")
        self.block = blocks[block_index]
        self.grid = grid
        self.output: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, args, output):
        tokens = output[1]  # (B, N, C) image tokens; output[0] is the text stream
        h, w = self.grid()
        self.output = tokens.transpose(1, 2).unflatten(2, (h, w))  # (B, C, h', w')
