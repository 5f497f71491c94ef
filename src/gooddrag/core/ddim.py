"""Deterministic DDIM steps (eta = 0) and the schedule they run on.

The scheduler's *configuration* (betas, offsets, final alpha, prediction type)
comes from the model's own ``DDIMScheduler`` config; the step itself is one
pure function used in both directions. We do not call ``DDIMScheduler.step`` /
``DDIMInverseScheduler.step`` because the drag loop needs the same step
differentiably from the latent being optimised and batched with the unedited
branch, and inversion must pair timesteps exactly as the authors' code does
(evaluate the model at the *next* timestep, DragDiffusion's ``next_step``),
which ``DDIMInverseScheduler`` does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1,
)
"""Stable Diffusion 1.5's DDIM settings (docs/method.md, "Pipeline" 5), for models we build."""


def ddim_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_prod_from: torch.Tensor | float,
    alpha_prod_to: torch.Tensor | float,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Move ``sample`` from noise level ``alpha_prod_from`` to ``alpha_prod_to``.

    DDIM (Song et al., 2021) Eq. 12 with sigma = 0:
    ``x_to = sqrt(a_to) * x0_hat + sqrt(1 - a_to) * eps_hat``. Denoising when
    ``a_to > a_from``, inversion when ``a_to < a_from``. ``prediction_type`` is
    the model's: ``"epsilon"`` (eps_hat = output) or ``"v_prediction"``
    (x0_hat = sqrt(a) x - sqrt(1 - a) v, eps_hat = sqrt(a) v + sqrt(1 - a) x).
    """
    a_from = torch.as_tensor(alpha_prod_from, dtype=sample.dtype, device=sample.device)
    a_to = torch.as_tensor(alpha_prod_to, dtype=sample.dtype, device=sample.device)
    model_output = model_output.to(sample.dtype)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_from.sqrt() * sample - (1 - a_from).sqrt() * model_output
        eps = a_from.sqrt() * model_output + (1 - a_from).sqrt() * sample
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


@dataclass(frozen=True)
class DDIMSchedule:
    """The part of a DDIM schedule that is inverted and then denoised.

    ``timesteps[k]`` (descending) is the k-th denoising timestep;
    ``alphas[k]`` its alpha_prod and ``alphas_prev[k]`` that of the level it
    denoises to. Inversion walks the same pairs backwards.
    """

    timesteps: torch.Tensor  # (K,) long
    alphas: torch.Tensor  # (K,) float
    alphas_prev: torch.Tensor  # (K,) float

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def make_schedule(scheduler, num_inference_steps: int, inversion_steps: int) -> DDIMSchedule:
    """The last ``inversion_steps`` of a ``num_inference_steps`` DDIM schedule.

    ``scheduler`` is a diffusers ``DDIMScheduler`` (its config gives the betas,
    ``steps_offset`` and ``set_alpha_to_one``).
    """
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps[num_inference_steps - inversion_steps:].long()
    ratio = scheduler.config.num_train_timesteps // num_inference_steps
    acp = scheduler.alphas_cumprod
    final = scheduler.final_alpha_cumprod
    alphas = acp[timesteps]
    prev = timesteps - ratio
    alphas_prev = torch.where(prev >= 0, acp[prev.clamp_min(0)], torch.as_tensor(final, dtype=acp.dtype))
    return DDIMSchedule(timesteps=timesteps, alphas=alphas.float(), alphas_prev=alphas_prev.float())
