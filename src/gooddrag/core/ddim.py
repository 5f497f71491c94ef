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

    ``"flow"`` (rectified flow: SD3, FLUX): the levels are signal coefficients ``a = 1 - sigma`` of
    ``x = a x0 + (1 - a) eps`` and the output is the velocity ``v = eps - x0``; the same deterministic
    step (x0_hat = x - sigma v, eps_hat = x + (1 - sigma) v, then ``x_to = a_to x0_hat + (1 - a_to)
    eps_hat``) is the Euler step of the flow ODE, ``x_to = x + (sigma_to - sigma_from) v``
    (diffusers' ``FlowMatchEulerDiscreteScheduler.step``; docs/method.md, "Flow-matching backbones").
    ``a_to = 1`` gives the predicted clean latent on either kind.
    """
    a_from = torch.as_tensor(alpha_prod_from, dtype=sample.dtype, device=sample.device)
    a_to = torch.as_tensor(alpha_prod_to, dtype=sample.dtype, device=sample.device)
    model_output = model_output.to(sample.dtype)
    if prediction_type == "flow":
        return sample + (a_from - a_to) * model_output
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_from.sqrt() * sample - (1 - a_from).sqrt() * model_output
        eps = a_from.sqrt() * model_output + (1 - a_from).sqrt() * sample
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon, v_prediction or flow)")
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


@dataclass(frozen=True)
class DDIMSchedule:
    """The part of a DDIM schedule that is inverted and then denoised.

    ``timesteps[k]`` (descending) is the k-th denoising timestep;
    ``alphas[k]`` its alpha_prod and ``alphas_prev[k]`` that of the level it
    denoises to. Inversion walks the same pairs backwards. On a flow-matching model
    (:func:`make_flow_schedule`) the timesteps are floats (sigma x 1000) and the alphas are the
    signal coefficients ``1 - sigma`` that :func:`ddim_step`'s ``"flow"`` branch takes.
    """

    timesteps: torch.Tensor  # (K,) long (DDIM) or float (flow: sigma * 1000)
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


def make_flow_schedule(scheduler, num_inference_steps: int, inversion_steps: int, mu: float | None = None,
                       sigmas=None) -> DDIMSchedule:
    """The last ``inversion_steps`` of a ``num_inference_steps`` flow-matching schedule.

    ``scheduler`` is the model's own ``FlowMatchEulerDiscreteScheduler``, set up the way its pipeline
    does (``mu``: the dynamic shift, FLUX; ``sigmas``: explicit sigmas, FLUX passes
    ``linspace(1, 1/N, N)``); its shifted sigmas end with the terminal 0. Level k's signal
    coefficient is ``1 - sigma_k``; the last step denoises to ``1 - 0 = 1`` (clean).
    """
    kwargs = {"mu": mu} if mu is not None else {}
    if sigmas is not None:
        scheduler.set_timesteps(sigmas=sigmas, **kwargs)
    else:
        scheduler.set_timesteps(num_inference_steps, **kwargs)
    first = num_inference_steps - inversion_steps
    sig = scheduler.sigmas.float()  # (N + 1,) descending, last 0
    return DDIMSchedule(timesteps=scheduler.timesteps[first:].float(), alphas=1.0 - sig[first:num_inference_steps],
                        alphas_prev=1.0 - sig[first + 1:num_inference_steps + 1])
