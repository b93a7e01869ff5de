"""Guidance and thresholding: wrappers that turn one denoiser into another, so they compose.

    denoise = dynamic_threshold(classifier_free_guidance(model, cond, uncond, 7.0), schedule, 0.95, 1.5)

is DeepFloyd IF stage I's sampling rule. None of them knows about samplers.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .parameterization import Denoised, Denoiser, eps_from_x0, expand_like
from .schedules import Schedule

Model = Callable[[Tensor, Tensor, dict], Denoised]  # model(x_t (B,C,H,W), t (B,), cond dict of (B,...) tensors)


def _cat_cond(uncond: dict, cond: dict) -> dict:
    if set(uncond) != set(cond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
    both = {}
    for k in cond:
        u, c = uncond[k], cond[k]
        if u is None and c is None:
            both[k] = None
        elif isinstance(u, Tensor) and isinstance(c, Tensor):
            if u.shape != c.shape:
                raise ValueError(
                    f"cond[{k!r}] has shape {tuple(c.shape)} but uncond[{k!r}] has {tuple(u.shape)}; "
                    "encode both with the same text encoder, padding and batch size"
                )
            both[k] = torch.cat([u, c])  # IF's order: unconditional half first
        else:
            raise ValueError(f"cond[{k!r}] must be a tensor (or None in both), got {type(c).__name__}")
    return both


def classifier_free_guidance(model: Model, cond: dict, uncond: dict, scale: float) -> Denoiser:
    """Ho & Salimans 2022: d = d_u + scale * (d_c - d_u), one batched pass over cat([uncond, cond]).

    x0 and eps are both guided (they are linear in one another, so x_t = alpha x0 + sigma eps still holds);
    learned variance comes from the conditional half, as in DeepFloyd IF. scale == 1 is the conditional
    model alone, with no extra pass.
    """
    if scale == 1:
        return lambda x, t: model(x, t, cond)
    both = _cat_cond(uncond, cond)

    def denoise(x: Tensor, t: Tensor) -> Denoised:
        d = model(torch.cat([x, x]), torch.cat([t, t]), both)  # (2B, C, H, W)
        x0_u, x0_c = d.x0.chunk(2)
        eps_u, eps_c = d.eps.chunk(2)
        var = d.var_interp.chunk(2)[1] if d.var_interp is not None else None
        return Denoised(x0=x0_u + scale * (x0_c - x0_u), eps=eps_u + scale * (eps_c - eps_u), var_interp=var)

    return denoise


def _row_quantile(a: Tensor, p: float) -> Tensor:
    """Per-row quantile with linear interpolation (torch.quantile's default) for any size: (B, N) -> (B,)."""
    srt = a.sort(dim=1).values
    pos = p * (a.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, a.shape[1] - 1)
    return torch.lerp(srt[:, lo], srt[:, hi], pos - lo)  # torch.quantile refuses inputs over 2^24 elements


def _with_x0(d: Denoised, x: Tensor, t: Tensor, x0: Tensor, schedule: Schedule) -> Denoised:
    alpha, sigma = schedule.alpha_sigma(t)
    return Denoised(x0=x0, eps=eps_from_x0(x, x0, alpha, sigma, fallback=d.eps), var_interp=d.var_interp)


def dynamic_threshold(denoise: Denoiser, schedule: Schedule, percentile: float = 0.995,
                      max_value: float | None = None) -> Denoiser:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3).

    s = quantile(|x0_hat|, percentile) per sample, clamped to [1, max_value]; x0_hat = clamp(x0_hat, -s, s) / s.
    eps is recomputed from the thresholded x0 so that every sampler sees a consistent pair.
    IF uses percentile 0.95 with max_value 1.5 (stage I) or 1.0 (stage II, i.e. plain clipping).
    """
    if not 0 < percentile <= 1:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}; IF uses 0.95, Imagen 0.995")
    if max_value is not None and max_value < 1:
        raise ValueError(f"max_value must be >= 1 (or None for no cap), got {max_value}")

    def wrapped(x: Tensor, t: Tensor) -> Denoised:
        d = denoise(x, t)
        x0 = d.x0.float()                                            # quantile in float32, as IF does
        s = _row_quantile(x0.reshape(x0.shape[0], -1).abs(), percentile)  # (B,)
        s = expand_like(s.clamp(min=1.0, max=max_value), x0)         # (B,1,1,1)
        x0 = (torch.clamp(x0, -s, s) / s).to(d.x0.dtype)
        return _with_x0(d, x, t, x0, schedule)

    return wrapped


def static_threshold(denoise: Denoiser, schedule: Schedule) -> Denoiser:
    """Clip x0_hat to [-1, 1] (Saharia et al. 2022, "static thresholding"), eps recomputed."""
    def wrapped(x: Tensor, t: Tensor) -> Denoised:
        d = denoise(x, t)
        return _with_x0(d, x, t, d.x0.clamp(-1, 1), schedule)

    return wrapped


def clip_x0(denoise: Denoiser) -> Denoiser:
    """Clip x0_hat to [-1, 1] and keep the model's eps: diffusers' DDIM `clip_sample` (its default
    use_clipped_model_output=False), the one place where x_t = alpha x0 + sigma eps is knowingly broken,
    so that checkpoints configured this way (diffusers' upscaler test components) sample as they do there."""
    def wrapped(x: Tensor, t: Tensor) -> Denoised:
        d = denoise(x, t)
        return Denoised(x0=d.x0.clamp(-1, 1), eps=d.eps, var_interp=d.var_interp)

    return wrapped


THRESHOLDS = ("dynamic", "static", "clip_x0", "none")


def thresholding(kind: str, schedule: Schedule, percentile: float = 0.995,
                 max_value: float | None = None) -> Callable[[Denoiser], Denoiser]:
    """The wrapper a stage's `threshold` setting names: "dynamic", "static" or "none" (identity)."""
    if kind == "dynamic":
        return lambda denoise: dynamic_threshold(denoise, schedule, percentile, max_value)
    if kind == "static":
        return lambda denoise: static_threshold(denoise, schedule)
    if kind == "clip_x0":
        return clip_x0
    if kind == "none":
        return lambda denoise: denoise
    raise ValueError(f"unknown threshold {kind!r}; choose one of {list(THRESHOLDS)}")
