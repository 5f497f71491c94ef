"""Loading the backbone the real way, offline: diffusers folder, single-file checkpoint, separate VAE."""

import pytest
import torch

from gooddrag import DragPipeline, GoodDragError
from gooddrag.models.loading import (
    classify_source,
    load_components,
    resolve_device,
    resolve_dtype,
)

from .single_file_checkpoint import (
    diffusers_to_ldm_state_dict,
    save_single_file_checkpoint,
)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_folder_loads_with_its_configs(tiny_model_dir, tiny_pipe):
    assert tiny_pipe.source.kind == "folder"
    assert tiny_pipe.scheduler.config.prediction_type == "epsilon"
    assert tiny_pipe.scheduler.config.steps_offset == 1
    assert not tiny_pipe.scheduler.config.set_alpha_to_one
    assert all(not p.requires_grad for p in tiny_pipe.unet.parameters())
    assert tiny_pipe.encode_prompt("a cat").encoder_hidden_states.shape == (1, tiny_pipe.tokenizer.model_max_length, 32)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_loads_exactly(tiny_model_dir, tiny_pipe, tmp_path, suffix):
    path = save_single_file_checkpoint(tiny_model_dir, tmp_path / f"tiny{suffix}")
    pipe = DragPipeline.from_pretrained(str(path), model_config=str(tiny_model_dir), device="cpu")
    assert pipe.source.kind == "file"
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(pipe, name), getattr(tiny_pipe, name)), name


def test_single_file_without_config_offline_says_what_to_pass(tiny_model_dir, tmp_path):
    path = save_single_file_checkpoint(tiny_model_dir, tmp_path / "tiny.safetensors")
    with pytest.raises(GoodDragError, match="--model-config"):
        load_components(str(path))


def test_separate_single_file_vae(tiny_model_dir, tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    sd = diffusers_to_ldm_state_dict(tiny_model_dir)
    vae_sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(vae_sd, tmp_path / "vae.safetensors")
    pipe, _ = load_components(
        str(tiny_model_dir), vae=str(tmp_path / "vae.safetensors"), vae_config=str(tiny_model_dir / "vae")
    )
    assert _same_weights(pipe.vae, tiny_pipe.vae)
    # a VAE folder works too
    pipe2, _ = load_components(str(tiny_model_dir), vae=str(tiny_model_dir / "vae"))
    assert _same_weights(pipe2.vae, tiny_pipe.vae)


def test_hub_id_offline_names_the_way_out():
    with pytest.raises(GoodDragError) as err:
        load_components("some-org/not-a-model")
    msg = str(err.value)
    assert "some-org/not-a-model" in msg and "local diffusers folder" in msg and "\n" not in msg


def test_sources_are_classified_by_what_exists(tiny_model_dir, tmp_path):
    assert classify_source(str(tiny_model_dir)).kind == "folder"
    assert classify_source("stable-diffusion-v1-5/stable-diffusion-v1-5").kind == "hub"
    with pytest.raises(GoodDragError, match="no such file or folder"):
        classify_source(str(tmp_path / "missing.safetensors"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(GoodDragError, match="not a checkpoint"):
        classify_source(str(tmp_path / "notes.txt"))


def test_devices_and_dtypes():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(GoodDragError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GoodDragError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(GoodDragError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(GoodDragError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_bf16_weights_load_and_run(tiny_model_dir):
    pipe = DragPipeline.from_pretrained(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16
    z = torch.randn(1, 4, 8, 8)
    out = pipe.model_output(z, torch.tensor(10), pipe.encode_prompt(""))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_an_uncached_hub_model_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch, tiny_model_dir):
    """Without HF_HUB_OFFLINE, an unreachable hub is found by one short TCP connect (huggingface_hub's
    own retries took 23 s); a listening endpoint counts as reachable; local models are 'local'."""
    import socket
    import time

    from huggingface_hub import constants

    from gooddrag.models.loading import availability, hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    assert not hub_reachable()
    t0 = time.monotonic()
    with pytest.raises(GoodDragError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        load_components("someone/not-downloaded-model")
    assert time.monotonic() - t0 < 5
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert hub_reachable()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub_reachable()  # offline mode: no connection tried
    assert availability("someone/not-downloaded-model") == "download"
    assert availability(str(tiny_model_dir)) == "local" and availability("shapes-64") == "local"
    assert availability("./no/such/folder") == "missing"
