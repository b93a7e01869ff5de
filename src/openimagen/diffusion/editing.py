"""Inpainting as after-step hooks: what happens to the known (unmasked) region after each sampler step.

Masks are float tensors broadcastable to x, 1 = repaint (white), 0 = keep, already thresholded.

    keep_known     DeepFloyd IF / diffusers: x = (1 - m) * known + m * x_new after every step, and the
                   known region starts clean, so it is the input image for the whole run (never noised).
    repaint_known  RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
                   Probabilistic Models", eq. 8-9 and Algorithm 1): after the step t -> s the known region is
                   a fresh draw of q(x_s | known), so the model always sees one noise level everywhere;
                   with `resample` > 1 each step is redone after jumping back s -> t (jump length 1), which
                   lets the generated region settle against the known one.

Pure math: nothing here knows a network; the denoiser and the timesteps are handed in by the caller.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .noise import randn
from .parameterization import Denoiser, expand_like, learned_range_logvar
from .samplers import Step
from .schedules import Schedule, as_timesteps, gaussian_posterior

AfterStep = Callable[[Step], "Tensor | None"]  # the sampling.py seam: a returned tensor replaces step.x

BLENDS = ("keep_known", "repaint")  # the names inpainting accepts (editing.py)


def blend(known: Tensor, mask: Tensor, x: Tensor) -> Tensor:
    """(1 - m) * known + m * x: x where the mask is 1, known where it is 0 (exactly, for a 0/1 mask)."""
    mask = mask.to(x)
    return (1 - mask) * known.to(x) + mask * x


def keep_known(known: Tensor, mask: Tensor) -> AfterStep:
    """DeepFloyd IF's inpainting hook: after every step the known region is `known` again.

    diffusers blends with the state before the step; since that state's known region is `known` from the
    start (the start state is blended too), the two are the same numbers for a 0/1 mask.
    """
    def after_step(step: Step) -> Tensor:
        return blend(known, mask, step.x)

    return after_step


def repaint_known(known_x0: Tensor, mask: Tensor, schedule: Schedule, ts: Sequence[float] | Tensor, *,
                  generator: torch.Generator | None = None, resample: int = 1,
                  denoise: Denoiser | None = None) -> AfterStep:
    """RePaint's hook for a sampler walking `ts`: after step i (ts[i] -> s) the known region becomes
    q_sample(known_x0, s) with fresh noise (known_x0 itself after the last step, so the output keeps the
    known pixels exactly). `resample` = r > 1 redoes each step r - 1 more times: jump back to ts[i] with
    q(x_t | x_s), one ancestral (DDPM) step with `denoise`, blend again. The redone steps are ancestral
    whatever sampler made the first one (RePaint's algorithm is DDPM's); they are not redone on the last step.
    """
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be a whole number >= 1 (1 = no resampling; RePaint uses 10), got {resample!r}")
    if resample > 1 and denoise is None:
        raise ValueError("resampling redoes steps, so it needs the denoiser (denoise=)")
    ts = as_timesteps(schedule, ts)

    def known_at(alpha_s: Tensor, sigma_s: Tensor, x: Tensor) -> Tensor:
        x0 = known_x0.to(x).expand_as(x)
        return alpha_s * x0 + sigma_s * randn(x.shape, generator, like=x)

    def after_step(step: Step) -> Tensor:
        x = step.x
        if step.last:
            return blend(known_x0, mask, x)
        B = x.shape[0]
        t, s = ts[step.i].to(x.device).expand(B), ts[step.i + 1].to(x.device).expand(B)
        (a_t, s_t), (a_s, s_s) = ([expand_like(c, x) for c in schedule.alpha_sigma(u)] for u in (t, s))
        x = blend(known_at(a_s, s_s, x), mask, x)
        for _ in range(resample - 1):
            c_x0, c_xt, var, beta = gaussian_posterior(a_t, s_t, a_s, s_s)
            x_t = (a_t / a_s) * x + beta.sqrt() * randn(x.shape, generator, like=x)  # q(x_t | x_s): back up
            d = denoise(x_t, t)
            std = (torch.exp(0.5 * learned_range_logvar(d.var_interp, beta, var)) if d.var_interp is not None
                   else var.clamp_min(1e-20).sqrt())
            x = c_x0 * d.x0 + c_xt * x_t + std * randn(x.shape, generator, like=x)  # and down again
            x = blend(known_at(a_s, s_s, x), mask, x)
        return x

    return after_step
