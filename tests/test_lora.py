"""LoRA on the input image: training changes the UNet, saving and loading is exact,
a second edit of the same image reuses the cached LoRA."""

import pytest
import torch

from gooddrag import GoodDragError
from gooddrag.models import lora
from tests.helpers import POINTS, make_image, tiny_config


def _unet_out(pipe):
    torch.manual_seed(3)
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        return pipe.model_output(z, torch.tensor(400), pipe.encode_prompt(""))


def test_train_save_cache_and_reload(tiny_pipe, tmp_path):
    cfg = tiny_config(lora_steps=3, lora_batch_size=2)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
    base = _unet_out(tiny_pipe)
    try:
        rec = tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path, progress=False)
        assert rec["source"] == "trained"
        assert sorted(p.name for p in (tmp_path / rec["key"]).iterdir()) == ["lora.json", lora.LORA_FILE]
        trained = _unet_out(tiny_pipe)
        assert not torch.allclose(trained, base)  # the adapter does something
    finally:
        lora.remove_lora(tiny_pipe.unet)
    assert torch.equal(_unet_out(tiny_pipe), base)  # removed cleanly

    try:
        rec2 = tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path, progress=False)
        assert rec2 == {"source": "cache", "path": rec["path"], "key": rec["key"]}
        assert torch.allclose(_unet_out(tiny_pipe), trained, atol=1e-6)  # same weights back
    finally:
        lora.remove_lora(tiny_pipe.unet)


def test_cache_key_depends_on_image_model_and_settings():
    cfg = tiny_config(lora_steps=3)
    s = lora.lora_settings(cfg, "")
    k = lora.lora_cache_key("img", "model", s)
    assert k == lora.lora_cache_key("img", "model", dict(s))
    assert k != lora.lora_cache_key("img2", "model", s)
    assert k != lora.lora_cache_key("img", "model2", s)
    assert k != lora.lora_cache_key("img", "model", lora.lora_settings(tiny_config(lora_steps=4), ""))
    assert k != lora.lora_cache_key("img", "model", lora.lora_settings(cfg, "a cat"))


def test_same_seed_same_lora(tiny_pipe, tmp_path):
    cfg = tiny_config(lora_steps=2, lora_batch_size=1)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
    outs = []
    for i in range(2):
        try:
            tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path / str(i), progress=False,
                                   generator=torch.Generator().manual_seed(7))
            outs.append(_unet_out(tiny_pipe))
        finally:
            lora.remove_lora(tiny_pipe.unet)
    assert torch.equal(outs[0], outs[1])


def test_explicit_lora_file_is_used(tiny_pipe, tmp_path):
    cfg = tiny_config(lora_steps=2, lora_batch_size=1)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
    try:
        rec = tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path, progress=False)
        trained = _unet_out(tiny_pipe)
    finally:
        lora.remove_lora(tiny_pipe.unet)
    try:
        rec2 = tiny_pipe.prepare_lora(inputs.image, "", cfg, lora_path=rec["path"], progress=False)
        assert rec2["source"] == "file"
        assert torch.allclose(_unet_out(tiny_pipe), trained, atol=1e-6)
    finally:
        lora.remove_lora(tiny_pipe.unet)
    with pytest.raises(GoodDragError, match="no such file"):
        tiny_pipe.prepare_lora(inputs.image, "", cfg, lora_path=tmp_path / "missing.safetensors", progress=False)


def _state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("fused", [False, True])
def test_remove_lora_restores_the_unet_keys_included(tiny_pipe, tmp_path, fused):
    """After training (and fusing) a LoRA and removing it, the UNet is the base model again: the same
    state_dict keys (no peft wrapper left behind) and bit-identical values, so tests that compare the
    session's UNet with a freshly loaded one pass in any order."""
    before = _state(tiny_pipe.unet)
    modules_before = [type(m) for m in tiny_pipe.unet.modules()]
    cfg = tiny_config(lora_steps=1, lora_batch_size=1)
    inputs = tiny_pipe.check_inputs(make_image(), [POINTS[0]], [POINTS[1]], None, cfg)
    try:
        tiny_pipe.prepare_lora(inputs.image, "", cfg, cache_dir=tmp_path, progress=False)
        assert tiny_pipe.unet.state_dict().keys() != before.keys()  # the adapter is there
        if fused:
            assert lora.fuse_lora(tiny_pipe.unet)
    finally:
        lora.remove_lora(tiny_pipe.unet)
    after = tiny_pipe.unet.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [type(m) for m in tiny_pipe.unet.modules()] == modules_before
    assert not getattr(tiny_pipe.unet, "peft_config", None)
    assert all(not p.requires_grad for p in tiny_pipe.unet.parameters())
    lora.remove_lora(tiny_pipe.unet)  # nothing attached: a no-op
    assert list(tiny_pipe.unet.state_dict()) == list(before)


def test_saving_a_lora_logs_no_empty_fp32_warning(tiny_pipe, tmp_path):
    """diffusers' save_lora_adapter warns "should be kept in float32: []" on every save
    (its ``.to(dtype=None)``); we drop that empty-list case, so an edit stays quiet."""
    import logging

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    diffusers_logger.addHandler(handler)
    lora.add_lora(tiny_pipe.unet, rank=2)
    try:
        lora.save_lora(tiny_pipe.unet, tmp_path / "adapter", {"test": True})
    finally:
        diffusers_logger.removeHandler(handler)
        lora.remove_lora(tiny_pipe.unet)
    assert (tmp_path / "adapter" / lora.LORA_FILE).is_file()
    assert [r.getMessage() for r in records if "float32" in r.getMessage()] == []
