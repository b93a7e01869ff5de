"""The forward process q(x_t | x0): the one place where a clean image is noised to time t.

Training (the loss input), noise-conditioning augmentation of a super-resolution stage's low-res input
and img2img start states all call `q_sample`, so they cannot drift apart.
"""
from __future__ import annotations

from torch import Tensor

from .parameterization import expand_like
from .schedules import Schedule


def q_sample(x0: Tensor, t: Tensor, schedule: Schedule, noise: Tensor) -> Tensor:
    """x_t = alpha_t x0 + sigma_t eps (Ho et al. 2020, eq. 4, variance preserving). t: (B,) schedule units."""
    alpha, sigma = schedule.alpha_sigma(t)
    return expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * noise
