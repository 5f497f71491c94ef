"""Mutual self-attention: plain self-attention when both branches are equal; the
edited branch reads the source branch's keys and values otherwise."""

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from gooddrag.models.attention import (
    MutualSelfAttentionProcessor,
    mutual_self_attention,
    self_attention_layer_names,
)


def make_attention():
    torch.manual_seed(0)
    return Attention(query_dim=8, heads=2, dim_head=4).eval()


def by_hand(attn, queries_from, kv_from):
    """softmax(q k^T / sqrt(d)) v per head, then the output projection."""
    q, k, v = attn.to_q(queries_from), attn.to_k(kv_from), attn.to_v(kv_from)  # (L, 8)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[:, sl] @ k[:, sl].T / 2.0, dim=-1)  # sqrt(4) = 2
        heads.append(weights @ v[:, sl])
    return attn.to_out[0](torch.cat(heads, dim=-1))


@torch.no_grad()
def test_equal_branches_reduce_to_plain_self_attention():
    attn = make_attention()
    x = torch.randn(1, 5, 8)
    both = torch.cat([x, x])
    mutual = MutualSelfAttentionProcessor()(attn, both)
    plain = AttnProcessor2_0()(attn, both)
    assert torch.allclose(mutual, plain, atol=1e-6)


@torch.no_grad()
def test_edited_branch_attends_to_source_keys_and_values():
    attn = make_attention()
    src, edit = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    out = MutualSelfAttentionProcessor()(attn, torch.cat([src, edit]))
    assert torch.allclose(out[0], by_hand(attn, src[0], src[0]), atol=1e-5)  # source: itself
    assert torch.allclose(out[1], by_hand(attn, edit[0], src[0]), atol=1e-5)  # edit: q from edit, k/v from source
    assert not torch.allclose(out[1], by_hand(attn, edit[0], edit[0]), atol=1e-3)


@torch.no_grad()
def test_odd_batch_and_cross_attention_are_untouched():
    attn = make_attention()
    x = torch.randn(3, 5, 8)
    assert torch.allclose(MutualSelfAttentionProcessor()(attn, x), AttnProcessor2_0()(attn, x), atol=1e-6)
    ctx = torch.randn(2, 7, 8)
    y = torch.randn(2, 5, 8)
    assert torch.allclose(MutualSelfAttentionProcessor()(attn, y, ctx), AttnProcessor2_0()(attn, y, ctx), atol=1e-6)


def test_layer_order_is_down_mid_up(tiny_pipe):
    names = self_attention_layer_names(tiny_pipe.unet)
    assert len(names) == 10  # 3 down, 1 mid, 6 up transformer blocks in the tiny UNet
    assert [n.split(".")[0] for n in names] == ["down_blocks"] * 3 + ["mid_block"] + ["up_blocks"] * 6
    assert all(n.endswith("attn1") for n in names)
    assert names[4].startswith("up_blocks.1.attentions.0") and names[-1].startswith("up_blocks.3.attentions.1")


@torch.no_grad()
def test_unet_with_mutual_layers_equals_plain_when_branches_equal(tiny_pipe):
    unet = tiny_pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    z = torch.randn(1, 4, 16, 16).repeat(2, 1, 1, 1)
    text = tiny_pipe.encode_prompt("").encoder_hidden_states.repeat(2, 1, 1)
    plain = unet(z, 500, encoder_hidden_states=text).sample
    with mutual_self_attention(unet, 4) as chosen:
        assert len(chosen) == 6
        kinds = unet.attn_processors
        assert sum(isinstance(p, MutualSelfAttentionProcessor) for p in kinds.values()) == 6
        mutual = unet(z, 500, encoder_hidden_states=text).sample
        z2 = z.clone()
        z2[1] += 0.5
        differs = unet(z2, 500, encoder_hidden_states=text).sample
    assert torch.allclose(plain, mutual, atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before  # restored
    # the source half is unaffected by what the edited half contains
    assert torch.allclose(differs[0], plain[0], atol=1e-5)
