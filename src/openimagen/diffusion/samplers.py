"""Samplers: pure functions `sample(denoise, x, schedule, ts, ...) -> x0`, one per paper.

Each walks the descending timesteps `ts` and, after the last entry, steps to the clean state
(alpha = 1, sigma = 0; what diffusers calls prev_t = -1). Any number of steps on any schedule.
The sampler state is kept in at least float32; the result has that dtype.
Noise is drawn only on steps whose next state is not clean, on the generator's device in float32 and
then moved (diffusers' `randn_tensor`), so seeded runs reproduce diffusers' DDPM scheduler draw for draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .noise import randn
from .parameterization import Denoiser, expand_like, learned_range_logvar
from .schedules import Schedule, as_timesteps, gaussian_posterior


@dataclass
class Step:
    """What a sampler reports after step i (t -> the next time): the seam for previews, cancel and editing."""
    i: int                 # step index, 0-based
    num_steps: int         # len(ts)
    t: Tensor              # 0-d, the time this step started from
    x_t: Tensor            # (B,C,H,W) the state at t, before the step
    x: Tensor              # (B,C,H,W) the state after the step (clean after the last one)
    x0_hat: Tensor         # (B,C,H,W) the denoised estimate at t: a free preview in data space
    last: bool             # the step went to the clean state
    stage: int = 0         # which stage of a cascade (set by Cascade.generate)


# callback(step) after every step; a returned tensor replaces step.x (editing hooks), None keeps it.
Callback = Callable[[Step], "Tensor | None"]


def _report(callback: Callback | None, i: int, n: int, t: Tensor, x_t: Tensor, x: Tensor, x0_hat: Tensor,
            last: bool) -> Tensor:
    if callback is None:
        return x
    out = callback(Step(i, n, t[0], x_t, x, x0_hat, last))
    return x if out is None else out.to(x)


def _half_logsnr_step(schedule: Schedule, t: Tensor, t_next: Tensor, x: Tensor) -> Tensor:
    """h = lambda_s - lambda_t with lambda = log(alpha/sigma) = logsnr/2: the DPM-Solver++ step size."""
    lam_t = expand_like(schedule.logsnr(t), x) / 2
    lam_s = expand_like(schedule.logsnr(t_next.expand(x.shape[0])), x) / 2
    return lam_s - lam_t


def _steps(x: Tensor, schedule: Schedule, ts):
    """Yield (i, t (B,), (alpha_t, sigma_t), (alpha_s, sigma_s), last) for each step t -> s, all (B,1,1,1)."""
    ts = as_timesteps(schedule, ts).to(x.device)
    B = x.shape[0]
    for i in range(len(ts)):
        t = ts[i].expand(B)
        a_t, s_t = (expand_like(c, x) for c in schedule.alpha_sigma(t))
        last = i == len(ts) - 1
        if last:  # the clean state
            a_s, s_s = torch.ones_like(a_t), torch.zeros_like(s_t)
        else:
            a_s, s_s = (expand_like(c, x) for c in schedule.alpha_sigma(ts[i + 1].expand(B)))
        yield i, t, (a_t, s_t), (a_s, s_s), last


def _start(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def ddpm(denoise: Denoiser, x: Tensor, schedule: Schedule, ts: Sequence[float] | Tensor, *,
         generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Ancestral sampling, Ho et al. 2020 (Algorithm 2) on an arbitrary sub-chain ts.

    Each step draws x_s ~ q(x_s | x_t, x0_hat): posterior mean, and either the posterior variance or, when
    the denoiser returns `var_interp`, the learned-range variance of Nichol & Dhariwal 2021 (eq. 15),
    with beta = 1 - abar_t/abar_s of the respaced chain (DeepFloyd IF, diffusers' "learned_range").
    """
    x = _start(x)
    for i, t, (a_t, s_t), (a_s, s_s), last in _steps(x, schedule, ts):
        d, x_t = denoise(x, t), x
        c_x0, c_xt, var, beta = gaussian_posterior(a_t, s_t, a_s, s_s)
        x = c_x0 * d.x0 + c_xt * x                                     # posterior mean
        if not last:  # going to the clean state has zero variance: no noise (diffusers: only when t > 0)
            noise = randn(x.shape, generator, like=x)
            if d.var_interp is not None:
                std = torch.exp(0.5 * learned_range_logvar(d.var_interp, beta, var))
            else:
                std = var.clamp_min(1e-20).sqrt()
            x = x + std * noise
        x = _report(callback, i, len(ts), t, x_t, x, d.x0, last)
    return x


def ddim(denoise: Denoiser, x: Tensor, schedule: Schedule, ts: Sequence[float] | Tensor, *, eta: float = 0.0,
         generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """DDIM, Song et al. 2021 (eq. 12 and 16): deterministic at eta = 0, DDPM-like variance at eta = 1.

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c = eta * (sigma_s/sigma_t) * sqrt(1 - abar_t/abar_s).
    A schedule whose `final_alpha_sigma()` is not None ends there instead of at the clean state.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM variance), got {eta}")
    x = _start(x)
    final = getattr(schedule, "final_alpha_sigma", lambda: None)()  # diffusers' set_alpha_to_one=False
    for i, t, (a_t, s_t), (a_s, s_s), last in _steps(x, schedule, ts):
        d, x_t = denoise(x, t), x
        if last and final is not None:  # land on alphas_cumprod[0], not the clean state
            a_s, s_s = torch.full_like(a_t, final[0]), torch.full_like(s_t, final[1])
        beta = (s_t**2 - s_s**2) / a_s**2                              # 1 - abar_t / abar_s
        c = eta * (s_s / s_t) * beta.clamp_min(0).sqrt()
        x = a_s * d.x0 + (s_s**2 - c**2).clamp_min(0).sqrt() * d.eps
        if eta > 0 and not last:
            x = x + c * randn(x.shape, generator, like=x)
        x = _report(callback, i, len(ts), t, x_t, x, d.x0, last)
    return x


def dpmpp_2m(denoise: Denoiser, x: Tensor, schedule: Schedule, ts: Sequence[float] | Tensor, *,
             generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (Algorithm 2), data prediction, multistep, in lambda = logsnr / 2.

    x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) D,  h = lambda_s - lambda_t,
    D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev,  r = h_prev / h  (first order on the first step).
    The final step to sigma = 0 has h = inf; its first-order update is x = x0_hat.
    `generator` is unused (the solver is deterministic); it is accepted so all samplers share one signature.
    """
    x = _start(x)
    ts = as_timesteps(schedule, ts).to(x.device)
    x0_prev, h_prev = None, None
    for i, t, (a_t, s_t), (a_s, s_s), last in _steps(x, schedule, ts):
        d, x_t = denoise(x, t), x
        if last:
            x = d.x0
        else:
            h = _half_logsnr_step(schedule, t, ts[i + 1], x)
            D = d.x0
            if x0_prev is not None:
                r = h_prev / h
                D = (1 + 1 / (2 * r)) * d.x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x - a_s * torch.expm1(-h) * D
            x0_prev, h_prev = d.x0, h
        x = _report(callback, i, len(ts), t, x_t, x, d.x0, last)
    return x


def dpmpp_3m(denoise: Denoiser, x: Tensor, schedule: Schedule, ts: Sequence[float] | Tensor, *,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(3M), Lu et al. 2022 ("DPM-Solver++", sec. 4 and app. B), data prediction, multistep.

    With h = lambda_s - lambda_t, r0 = h_prev/h, r1 = h_prev2/h and the last three x0_hat m0, m1, m2:
    D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
    x_s = (sigma_s/sigma_t) x_t - alpha_s (e^-h - 1) m0 + alpha_s ((e^-h - 1)/h + 1) D1
          - alpha_s ((e^-h - 1 + h)/h^2 - 1/2) D2.
    Warm-up at orders 1, 2; the final step to sigma = 0 is first order (x = x0_hat). `lower_order_final`:
    with fewer than 15 steps the step before it is at most second order, because the last log-SNR jumps
    are the largest and third-order extrapolation across them is unstable (diffusers' rule, same numbers).
    """
    x = _start(x)
    ts = as_timesteps(schedule, ts).to(x.device)
    n = len(ts)
    hist: list[tuple[Tensor, Tensor]] = []  # (x0_hat, h of the step it started) of earlier steps, newest last
    for i, t, (a_t, s_t), (a_s, s_s), last in _steps(x, schedule, ts):
        d, x_t = denoise(x, t), x
        if last:
            x = d.x0
        else:
            h = _half_logsnr_step(schedule, t, ts[i + 1], x)
            order = min(3, len(hist) + 1)
            if lower_order_final and n < 15 and i == n - 2:
                order = min(order, 2)
            m0, em1 = d.x0, torch.expm1(-h)
            x = (s_s / s_t) * x - a_s * em1 * m0
            if order == 2:
                (m1, h0) = hist[-1]
                x = x - 0.5 * a_s * em1 * (m0 - m1) / (h0 / h)
            elif order == 3:
                (m1, h0), (m2, h1) = hist[-1], hist[-2]
                r0, r1 = h0 / h, h1 / h
                d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
                D1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                D2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + a_s * (em1 / h + 1) * D1 - a_s * ((em1 + h) / h**2 - 0.5) * D2
            hist = (hist + [(m0, h)])[-2:]
        x = _report(callback, i, len(ts), t, x_t, x, d.x0, last)
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m}
