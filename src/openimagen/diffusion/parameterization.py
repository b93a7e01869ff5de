"""The denoiser contract, and the adapter from a network's raw output to it.

A network predicts one of eps (Ho et al. 2020), v = alpha*eps - sigma*x0 (Salimans & Ho 2022) or x0 itself;
optionally it also predicts a learned-range variance interpolation v_var in [-1, 1] on C extra channels
(Nichol & Dhariwal 2021, eq. 15; DeepFloyd IF's raw channels 3:6). `Parameterization.to_denoised` turns any
of these into the one thing samplers consume: `Denoised(x0, eps, var_interp)`, with
x_t = alpha * x0 + sigma * eps holding exactly (up to rounding) for every kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

PARAMETERIZATIONS = ("eps", "v", "x0")


@dataclass
class Denoised:
    x0: Tensor                        # (B,C,H,W) predicted clean image
    eps: Tensor                       # (B,C,H,W) noise consistent with x0: x_t = alpha*x0 + sigma*eps
    var_interp: Tensor | None = None  # (B,C,H,W) learned-range interpolation v in [-1, 1], or None


Denoiser = Callable[[Tensor, Tensor], Denoised]  # denoise(x_t (B,C,H,W), t (B,)) -> Denoised


def expand_like(c: Tensor | float, x: Tensor) -> Tensor:
    """A per-sample scalar (B,) (or 0-d / already broadcastable) as (B,1,...,1) on x's device."""
    c = torch.as_tensor(c, device=x.device)
    if c.ndim == 1:
        c = c.reshape(-1, *([1] * (x.ndim - 1)))
    return c


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    alpha, sigma = expand_like(alpha, x_t), expand_like(sigma, x_t)
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor, fallback: Tensor | None = None) -> Tensor:
    """eps = (x_t - alpha*x0) / sigma; where sigma = 0 (the clean state) eps is undefined: use `fallback` or 0."""
    alpha, sigma = expand_like(alpha, x_t), expand_like(sigma, x_t)
    eps = (x_t - alpha * x0) / sigma.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(sigma > 0, eps, torch.zeros_like(eps) if fallback is None else fallback)


def learned_range_logvar(var_interp: Tensor, beta: Tensor, posterior_var: Tensor) -> Tensor:
    """log variance between the posterior ("fixed small") and beta ("fixed large") variance.

    Nichol & Dhariwal 2021, eq. 15: log Sigma = f log beta + (1 - f) log beta_tilde, f = (v + 1) / 2.
    The posterior variance is floored at 1e-20 before the log, as DeepFloyd IF's scheduler does.
    """
    frac = (var_interp + 1) / 2
    min_log = torch.log(expand_like(posterior_var, var_interp).clamp_min(1e-20))
    max_log = torch.log(expand_like(beta, var_interp))
    return frac * max_log + (1 - frac) * min_log


@dataclass(frozen=True)
class Parameterization:
    kind: str = "eps"                 # "eps" | "v" | "x0"
    learned_variance: bool = False    # network outputs 2C channels: prediction, then v in [-1,1]

    def __post_init__(self):
        if self.kind not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {self.kind!r}; choose one of {list(PARAMETERIZATIONS)}")

    def out_channels(self, image_channels: int) -> int:
        return 2 * image_channels if self.learned_variance else image_channels

    def split(self, out: Tensor, image_channels: int) -> tuple[Tensor, Tensor | None]:
        """(prediction (B,C,H,W), var_interp (B,C,H,W) or None) from the raw network output."""
        want = self.out_channels(image_channels)
        if out.shape[1] != want:
            raise ValueError(
                f"network output has {out.shape[1]} channels but parameterization {self} expects {want} for "
                f"{image_channels}-channel images; fix the U-Net's out_channels or the learned_variance flag"
            )
        if self.learned_variance:
            return out[:, :image_channels], out[:, image_channels:]
        return out, None

    def to_denoised(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Denoised:
        pred, var_interp = self.split(out, x_t.shape[1])
        a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)  # (B,1,1,1)
        if self.kind == "eps":
            eps = pred
            x0 = (x_t - s * eps) / a
        elif self.kind == "v":  # v = a*eps - s*x0 and x_t = a*x0 + s*eps, with a^2 + s^2 = 1
            x0 = a * x_t - s * pred
            eps = s * x_t + a * pred
        else:
            x0 = pred
            eps = eps_from_x0(x_t, x0, alpha, sigma)
        return Denoised(x0=x0, eps=eps, var_interp=var_interp)

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """What the network's first C channels should output for MSE training."""
        if self.kind == "eps":
            return eps
        if self.kind == "x0":
            return x0
        a, s = expand_like(alpha, x0), expand_like(sigma, x0)
        return a * eps - s * x0
