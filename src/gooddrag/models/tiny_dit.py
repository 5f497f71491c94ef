"""Tiny SD3- and FLUX-shaped pipelines (diffusion transformers) for tests and offline runs.

Each has the parts of the real model, a few ten thousand parameters each (docs/dit-plan.md, section 6):

* SD3 / SD3.5: an ``SD3Transformer2DModel`` (MMDiT, patch 2, RMS q/k norm, one SD3.5-style dual-attention
  layer), two CLIP text encoders with projections of different widths (SD3: 768 and 1280; their pooled
  outputs together are ``pooled_projection_dim``), optionally a T5 encoder, a 16-channel
  ``AutoencoderKL`` with SD3's scaling and shift factors and no quant convs, and SD3's
  ``FlowMatchEulerDiscreteScheduler`` settings (shift 3).
* FLUX.1: a ``FluxTransformer2DModel`` (two double-stream and two single-stream blocks, RoPE, the
  guidance embedding of FLUX.1-dev), one CLIP (its pooled output), a T5 encoder (FLUX cannot drop it),
  a 16-channel VAE with FLUX's factors and FLUX.1-dev's dynamic-shift scheduler settings.

Tokenizers are built from local vocabularies: CLIP's byte alphabet (:mod:`gooddrag.models.tiny`), and
for T5 a character-level ``tokenizers`` WordLevel model wrapped in ``PreTrainedTokenizerFast`` (a real
T5 tokenizer needs a sentencepiece file that cannot be downloaded here). Weights are random (seeded);
as in :mod:`gooddrag.models.tiny` the output layer is scaled down so that inversion can reconstruct.

Usage::

    python -m gooddrag.models.tiny_dit sd3|sd3-t5|flux /tmp/tiny-sd3
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from .tiny import tiny_vocab, tiny_vae

__all__ = ["make_tiny_sd3_pipeline", "make_tiny_flux_pipeline", "save_tiny_dit_pipeline",
           "SD3_SCHEDULER_CONFIG", "FLUX_SCHEDULER_CONFIG"]

SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
"""stabilityai/stable-diffusion-3.5-medium's ``scheduler/scheduler_config.json`` (and SD3-medium's)."""
FLUX_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                             max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
"""black-forest-labs/FLUX.1-dev's ``scheduler/scheduler_config.json``."""
SD3_VAE = dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)
FLUX_VAE = dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159)
T5_WIDTH = 96


def tiny_clip(width: int, projection: bool, max_length: int = 77, projection_dim: int = 32):
    """(text encoder, tokenizer): a tiny CLIP of ``width`` (with a text projection when ``projection``)."""
    config = CLIPTextConfig(vocab_size=2 * 256 + 2, hidden_size=width, intermediate_size=2 * width,
                            num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                            projection_dim=projection_dim, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model, CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=max_length)


def tiny_t5(max_length: int = 16):
    """(T5 encoder, tokenizer): a one-layer T5 of width 96 and a character-level fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {ch: i + 3 for i, ch in enumerate(chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=max_length)
    config = T5Config(vocab_size=len(vocab) + 2, d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config).eval(), tokenizer  # eval: no dropout, as a loaded one


def make_tiny_sd3_pipeline(seed: int = 0, t5: bool = False, max_length: int = 77, transformer=None,
                           vae=None) -> StableDiffusion3Pipeline:
    """A tiny ``StableDiffusion3Pipeline`` (random, seeded); ``t5=False``: without T5, as diffusers
    allows (the pipeline then feeds zeros in its place). ``transformer`` / ``vae``: use these instead
    (the shapes-dit model brings its own); ``max_length``: the CLIP tokenizers' length."""
    torch.manual_seed(seed)
    if transformer is None:
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
            pooled_projection_dim=64, pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
        with torch.no_grad():  # see tiny.make_tiny_pipeline: a slowly changing prediction
            transformer.proj_out.weight.mul_(0.02)
    clip_l, tok_l = tiny_clip(32, True, max_length)
    clip_g, tok_g = tiny_clip(48, True, max_length)
    t5_model, t5_tok = tiny_t5() if t5 else (None, None)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        vae=vae if vae is not None else tiny_vae(**SD3_VAE), text_encoder=clip_l, tokenizer=tok_l,
        text_encoder_2=clip_g, tokenizer_2=tok_g, text_encoder_3=t5_model, tokenizer_3=t5_tok)


def make_tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A tiny ``FluxPipeline`` shaped like FLUX.1-dev (guidance embedding; random, seeded)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    with torch.no_grad():
        transformer.proj_out.weight.mul_(0.02)
    clip, tok = tiny_clip(32, False)
    t5_model, t5_tok = tiny_t5()
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=tiny_vae(**FLUX_VAE), text_encoder=clip, tokenizer=tok, text_encoder_2=t5_model, tokenizer_2=t5_tok)


BUILDERS = {"sd3": make_tiny_sd3_pipeline, "sd3-t5": lambda seed=0: make_tiny_sd3_pipeline(seed, t5=True),
            "flux": make_tiny_flux_pipeline}


def save_tiny_dit_pipeline(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``kind`` (sd3, sd3-t5, flux) and ``save_pretrained`` it."""
    folder = Path(folder)
    BUILDERS[kind](seed=seed).save_pretrained(folder)
    return folder


if __name__ == "__main__":  # pragma: no cover - thin script
    if len(sys.argv) != 3 or sys.argv[1] not in BUILDERS:
        sys.exit(f"usage: python -m gooddrag.models.tiny_dit {'|'.join(BUILDERS)} OUTPUT_FOLDER")
    save_tiny_dit_pipeline(sys.argv[1], sys.argv[2])
