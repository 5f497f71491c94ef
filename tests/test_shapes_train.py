"""The shapes model's training script: its loss weighting worked by hand, and a few-step
run end to end (from scratch, then reusing that run's autoencoder) saved and loaded back."""

import json

import pytest
import torch
from diffusers import DDPMScheduler

from gooddrag.core.ddim import SD15_SCHEDULER_CONFIG
from gooddrag.methods.pipeline import DragPipeline
from gooddrag.shapes.train import loss_weights, main, training_target

SMALL = ["--scenes", "4", "--vae-steps", "2", "--vae-batch", "2", "--unet-steps", "2", "--unet-batch", "2",
         "--threads", "1"]
"""A few-step training run: seconds on a CPU."""


@pytest.fixture
def noise_sched():
    betas = {k: SD15_SCHEDULER_CONFIG[k] for k in ("beta_start", "beta_end", "beta_schedule", "clip_sample")}
    return DDPMScheduler(num_train_timesteps=1000, **betas)


def test_min_snr_weights_by_hand(noise_sched):
    t = torch.tensor([0, 500, 999])
    a = noise_sched.alphas_cumprod[t]  # alpha_bar_t
    snr = a / (1 - a)  # SNR_t = alpha_bar / (1 - alpha_bar): about 566, 0.28, 0.0047 on SD1.5's betas
    assert snr[0] > 5 > snr[1] > snr[2]
    # off: plain MSE
    assert torch.equal(loss_weights(noise_sched, t, 0.0, "epsilon"), torch.ones(3))
    # eps target: min(SNR, 5) / SNR = 5 / SNR where SNR > 5, else 1
    w = loss_weights(noise_sched, t, 5.0, "epsilon")
    torch.testing.assert_close(w, torch.stack([5 / snr[0], torch.tensor(1.0), torch.tensor(1.0)]))
    # v target: min(SNR, 5) / (SNR + 1); below gamma that is SNR / (SNR + 1) = alpha_bar
    w = loss_weights(noise_sched, t, 5.0, "v_prediction")
    torch.testing.assert_close(w, torch.stack([5 / (snr[0] + 1), a[1], a[2]]))


def test_training_targets_by_hand(noise_sched):
    t = torch.tensor([100, 900])
    x0 = torch.full((2, 1, 1, 1), 2.0)
    noise = torch.full((2, 1, 1, 1), -1.0)
    assert torch.equal(training_target(noise_sched, x0, noise, t, "epsilon"), noise)
    a = noise_sched.alphas_cumprod[t].view(2, 1, 1, 1)
    v = a.sqrt() * -1.0 - (1 - a).sqrt() * 2.0  # v = sqrt(a) eps - sqrt(1 - a) x0
    torch.testing.assert_close(training_target(noise_sched, x0, noise, t, "v_prediction"), v)
    with pytest.raises(ValueError, match="sample"):
        training_target(noise_sched, x0, noise, t, "sample")


def test_few_step_training_runs_saves_and_reuses_its_autoencoder(tmp_path):
    first = tmp_path / "first"
    assert main(["--out", str(first), *SMALL]) == 0
    second = tmp_path / "second"
    assert main(["--out", str(second), *SMALL, "--vae-steps", "1", "--vae-from", str(first), "--snr-gamma", "5",
                 "--prediction-type", "v_prediction"]) == 0
    rec = json.loads((second / "training.json").read_text())
    assert rec["vae_from"]["folder"] == str(first)
    assert rec["vae_from"]["scenes"] == 4 and rec["vae_from"]["seed"] == 0
    assert rec["args"]["vae_steps"] == 2  # how the reused autoencoder was trained, not this run's flag
    assert rec["args"]["snr_gamma"] == 5.0 and rec["args"]["prediction_type"] == "v_prediction"
    card = (second / "README.md").read_text()
    assert "reused, not retrained" in card and "v-prediction MSE with Min-SNR-5 weighting" in card
    for name in ("loss_curve.png", "samples.png"):
        assert (second / name).is_file()
    # the reused autoencoder is the first run's, weight for weight
    a = DragPipeline.from_pretrained(str(first), device="cpu", dtype="fp32")
    b = DragPipeline.from_pretrained(str(second), device="cpu", dtype="fp32")
    for (name, p), (_, q) in zip(a.vae.state_dict().items(), b.vae.state_dict().items()):
        assert torch.equal(p, q), name
    assert b.scheduler.config.prediction_type == "v_prediction"
    assert b.vae.config.scaling_factor == pytest.approx(rec["scaling_factor"])
    assert a.scheduler.config.prediction_type == "epsilon"


def test_refuses_an_existing_folder_and_a_bad_vae_source(tmp_path):
    with pytest.raises(SystemExit, match="exists"):
        main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--vae-from .*training.json"):
        main(["--out", str(tmp_path / "new"), "--vae-from", str(tmp_path / "nowhere")])


@pytest.mark.slow  # 20-25 s; the trainer's default path is test_few_step_training_runs_saves_and_reuses_its_autoencoder
def test_latent_factor_2_trains_a_2x_autoencoder_and_a_32x32_unet(tmp_path):
    out = tmp_path / "f2"
    assert main(["--out", str(out), *SMALL, "--latent-factor", "2"]) == 0
    pipe = DragPipeline.from_pretrained(str(out), device="cpu", dtype="fp32")
    with torch.no_grad():
        latents = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 32, 32)  # 64 px / 2, 4 channels
    assert pipe.unet.config.sample_size == 32 and len(pipe.unet.config.block_out_channels) == 4
    assert "2x down" in (out / "README.md").read_text()
    # a 4x autoencoder cannot be reused under --latent-factor 2
    f4 = tmp_path / "f4"
    assert main(["--out", str(f4), *SMALL]) == 0
    with pytest.raises(SystemExit, match="4x, not --latent-factor 2"):
        main(["--out", str(tmp_path / "mixed"), *SMALL, "--latent-factor", "2", "--vae-from", str(f4)])


def test_vae_scale_factor_of_each_training_config():
    from gooddrag.core.geometry import vae_scale_factor
    from gooddrag.shapes.train import CONFIGS

    assert {f: vae_scale_factor(vae) for f, (vae, _) in CONFIGS.items()} == {4: 4, 2: 2}


def test_unet_size_flags_reach_the_saved_unet_and_bad_values_are_refused(tmp_path):
    out = tmp_path / "wide"
    assert main(["--out", str(out), *SMALL, "--unet-channels", "32,48,48", "--unet-layers-per-block", "2"]) == 0
    pipe = DragPipeline.from_pretrained(str(out), device="cpu", dtype="fp32")
    assert tuple(pipe.unet.config.block_out_channels) == (32, 48, 48)
    assert pipe.unet.config.layers_per_block == 2
    assert "[32, 48, 48] channels, 2 layer(s) per block" in (out / "README.md").read_text()
    with pytest.raises(SystemExit, match="give 3 values"):
        main(["--out", str(tmp_path / "a"), *SMALL, "--unet-channels", "32,48"])
    with pytest.raises(SystemExit, match="40 is not a multiple of the 16"):
        main(["--out", str(tmp_path / "b"), *SMALL, "--unet-channels", "32,40,48"])
    with pytest.raises(SystemExit, match="must be >= 1"):
        main(["--out", str(tmp_path / "c"), *SMALL, "--unet-layers-per-block", "0"])
    with pytest.raises(SystemExit):  # argparse: not integers
        main(["--out", str(tmp_path / "d"), *SMALL, "--unet-channels", "wide"])
    assert not any((tmp_path / n).exists() for n in "abcd")
