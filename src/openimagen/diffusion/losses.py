"""Training loss: MSE on the parameterization's target, min-SNR-gamma weights, hybrid VLB for learned variance.

Learned-variance channels are trained with the hybrid objective of Nichol & Dhariwal 2021 (section 3.1):
L = L_simple + lambda * L_vlb with lambda = 0.001, where L_vlb is the KL between the true posterior
q(x_s | x_t, x0) one training step back (s = t - 1 discrete, s = t - 1/T continuous) and the model's
N(mu, Sigma), with a stop-gradient on the mean so that the VLB term only trains the variance. As in their
code, a uniformly sampled t stands for the sum over T terms, so the per-sample KL (bits per dimension) is
scaled by lambda * T. The decoder term at the first step (s < 0) is left out: it would train only the
variance of the final step, which sampling never uses (the step to the clean state adds no noise).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .forward import q_sample
from .parameterization import Parameterization, expand_like, learned_range_logvar
from .schedules import Schedule, gaussian_posterior


def min_snr_weight(logsnr: Tensor, kind: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), (B,): the x0-space weight min(snr, gamma) expressed in
    the space of each target (eps: divide by snr; v: divide by snr + 1; x0: as is)."""
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0 (the paper uses 5), got {gamma}")
    snr = torch.exp(logsnr.float())
    w = snr.clamp(max=gamma)
    if kind == "eps":
        return w / snr
    if kind == "v":
        return w / (snr + 1)
    if kind == "x0":
        return w
    raise ValueError(f"unknown parameterization {kind!r}; choose 'eps', 'v' or 'x0'")


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def vlb_term(model_out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, schedule: Schedule,
             parameterization: Parameterization) -> Tensor:
    """(B,) KL(q(x_s|x_t,x0) || p(x_s|x_t)) in bits per dimension, mean gradient stopped; 0 where s < 0."""
    T = schedule.config.num_train_timesteps
    step = 1.0 if schedule.discrete else 1.0 / T
    valid = t - step >= 0
    # Rows without a previous step get a dummy finite (t, s) pair: a masked inf/nan would still poison grads.
    t = torch.where(valid, t, torch.full_like(t, step))
    s = t - step
    a_t, s_t = (expand_like(c, x0) for c in schedule.alpha_sigma(t))
    a_s, s_s = (expand_like(c, x0) for c in schedule.alpha_sigma(s))
    c_x0, c_xt, var, beta = gaussian_posterior(a_t, s_t, a_s, s_s)
    true_mean = c_x0 * x0 + c_xt * x_t
    true_logvar = torch.log(var.clamp_min(1e-20)).expand_as(x0)
    d = parameterization.to_denoised(model_out.detach(), x_t, a_t, s_t)  # stop-gradient on the mean
    C = x0.shape[1]
    model_logvar = learned_range_logvar(model_out[:, C:].float(), beta, var)  # gradient reaches v only
    model_mean = c_x0 * d.x0 + c_xt * x_t
    kl = _normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=tuple(range(1, x0.ndim)))
    return torch.where(valid, kl / math.log(2.0), torch.zeros_like(kl))


def diffusion_loss(model_out: Tensor, x0: Tensor, eps: Tensor, t: Tensor, schedule: Schedule,
                   parameterization: Parameterization, min_snr_gamma: float | None = None,
                   vlb_weight: float = 1e-3) -> Tensor:
    """Scalar training loss for one batch, where x_t = alpha_t x0 + sigma_t eps was the network's input.

    model_out: (B, C or 2C, H, W) raw network output; x0, eps: (B,C,H,W); t: (B,) in schedule units.
    MSE per sample on `parameterization.target`, optionally times min-SNR-gamma weights, averaged; plus
    vlb_weight * T * vlb_term when the parameterization has learned variance (see the module docstring).
    """
    C = x0.shape[1]
    pred, _ = parameterization.split(model_out, C)
    alpha, sigma = schedule.alpha_sigma(t)
    target = parameterization.target(x0, eps, alpha, sigma)
    mse = ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, x0.ndim)))  # (B,)
    if min_snr_gamma is not None:
        mse = mse * min_snr_weight(schedule.logsnr(t), parameterization.kind, min_snr_gamma).to(mse.device)
    loss = mse.mean()
    if parameterization.learned_variance:
        x_t = q_sample(x0, t, schedule, eps)
        T = schedule.config.num_train_timesteps
        loss = loss + vlb_weight * T * vlb_term(model_out.float(), x0.float(), x_t.float(), t, schedule,
                                                parameterization).mean()
    return loss
