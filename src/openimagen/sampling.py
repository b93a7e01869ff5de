"""Run one stage of a cascade: the whole per-stage recipe in one function, with seams for what varies.

    x, ts = start(...)                      pure noise at ts[0], or an image noised part-way (img2img)
    lowres = augment(previous image)        super-resolution stages only
    denoise = wrappers(threshold(cfg(stage.model)))
    x = sampler(denoise, x, ts, callback)   after every step: after_step may replace x, then callback

An editing feature is a start state, a denoiser wrapper or an after-step hook (docs/architecture.md),
never a keyword of a sampler or a branch in `Cascade.generate`. Random numbers are drawn from the one
generator in diffusers' IF order: the start state, then the augmentation noise, then the sampler's
(a stage with `lowres_noise_first`, the x4 upscaler, draws the augmentation noise before the start state).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .diffusion import SAMPLERS, Denoiser, Step, classifier_free_guidance, q_sample, thresholding
from .diffusion.noise import randn
from .stage import Stage


class GenerationCancelled(RuntimeError):
    """A callback asked to stop; raised after the step it saw, so nothing half-finished is returned."""

    def __init__(self, stage: int, step: int):
        super().__init__(f"generation cancelled at stage {stage}, step {step}")
        self.stage, self.step = stage, step


# ----------------------------------------------------------------------------------------------
# start states: where the sampler starts, and which of the stage's timesteps it walks


class StartState(Protocol):
    def __call__(self, shape: tuple[int, ...], ts: Tensor, stage: Stage, generator: torch.Generator,
                 device: torch.device) -> tuple[Tensor, Tensor]:
        """-> (x at ts'[0], ts'): the state to start from and the (possibly cut) timesteps."""


def pure_noise(shape, ts, stage, generator, device) -> tuple[Tensor, Tensor]:
    """x_T ~ N(0, I) and every timestep: text-to-image (and plain super-resolution)."""
    return randn(shape, generator, device), ts


def noised_image(image: Tensor, strength: float) -> StartState:
    """img2img: keep the last init = min(int(N * strength), N) of the N timesteps (DeepFloyd IF's rule)
    and start from `image` (B, 3, H, W) in [-1, 1] noised to the first of them."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 = ignore the image's content), got {strength}")

    def start(shape, ts, stage, generator, device):
        init = min(int(len(ts) * strength), len(ts))
        if init == 0:
            raise ValueError(f"strength {strength} with {len(ts)} steps runs no step; raise the strength or the steps")
        ts = ts[len(ts) - init:]
        x0 = image.to(device).float()
        if tuple(x0.shape) != tuple(shape):
            raise ValueError(f"the start image is {tuple(x0.shape)}, but this stage draws {tuple(shape)}")
        noise = randn(shape, generator, device)
        return q_sample(x0, ts[:1].expand(shape[0]), stage.schedule, noise), ts

    return start


# ----------------------------------------------------------------------------------------------
# one stage


Wrapper = Callable[[Denoiser], Denoiser]
AfterStep = Callable[[Step], "Tensor | None"]        # may return a replacement for step.x
StepCallback = Callable[[Step], "bool | None"]      # False stops the run (GenerationCancelled)


@dataclass(frozen=True)
class StagePlan:
    """What an edit puts into one stage's run (the seams of `sample_stage`); the default is text-to-image."""
    start: StartState = pure_noise
    wrappers: tuple[Wrapper, ...] = ()
    after_step: AfterStep | None = None

    def as_kwargs(self) -> dict:
        return {"start": self.start, "wrappers": tuple(self.wrappers), "after_step": self.after_step}


def sample_stage(
    stage: Stage,
    cond: dict,
    uncond: dict,
    shape: tuple[int, int, int, int],
    ts: Tensor,
    *,
    generator: torch.Generator,
    sampler: str | None = None,
    guidance: float | None = None,
    lowres: Tensor | None = None,
    noise_level: float | None = None,
    start: StartState = pure_noise,
    wrappers: Sequence[Wrapper] = (),
    after_step: AfterStep | None = None,
    callback: StepCallback | None = None,
    autocast_dtype: torch.dtype | None = None,
    stage_index: int = 0,
) -> Tensor:
    """One stage's image (B, C, H, W), unclamped. cond / uncond: {"text_embeds", "text_mask"} (B, ...).

    `sampler`, `guidance`, `noise_level` default to the stage's config. `wrappers` wrap the guided,
    thresholded denoiser in order (the last is outermost). `after_step` sees every step and may replace
    x (inpainting keeps the known region); `callback` then sees it (previews) and stops the run by
    returning False. `lowres` is the previous stage's image, required by super-resolution stages.
    """
    cfg = stage.config
    name = sampler or cfg.sampler
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    device = cond["text_embeds"].device
    cond, uncond = dict(cond), dict(uncond)
    if not stage.lowres_noise_first:
        x, ts = start(shape, ts, stage, generator, device)
    if cfg.lowres:
        if lowres is None:
            raise ValueError("a super-resolution stage needs the previous stage's image (lowres=)")
        level = cfg.noise_level if noise_level is None else noise_level
        low, low_t = stage.augment_lowres(lowres, level, generator, tuple(shape[-2:]))
        for c in (cond, uncond):
            c["lowres"], c["noise_level"] = low, low_t
    if stage.lowres_noise_first:  # diffusers' x4 upscaler draws the low-res noise first
        x, ts = start(shape, ts, stage, generator, device)
    denoise = classifier_free_guidance(_model_fn(stage, autocast_dtype), cond, uncond,
                                       cfg.guidance if guidance is None else guidance)
    denoise = thresholding(cfg.threshold, stage.schedule, cfg.threshold_percentile, cfg.threshold_max)(denoise)
    for wrap in wrappers:
        denoise = wrap(denoise)

    def hook(step: Step):
        if after_step is not None:
            replaced = after_step(step)
            if replaced is not None:
                step.x = replaced  # the sampler casts it to its state's dtype
        if callback is not None and callback(step) is False:
            raise GenerationCancelled(stage_index, step.i)
        return step.x

    hooked = after_step is not None or callback is not None
    return SAMPLERS[name](denoise, x, stage.schedule, ts, generator=generator, callback=hook if hooked else None)


def _model_fn(stage: Stage, autocast_dtype):
    if autocast_dtype is None:
        return stage.model
    device_type = next(stage.parameters()).device.type

    def model(x, t, cond):
        with torch.autocast(device_type, dtype=autocast_dtype):
            return stage.model(x, t, cond)

    return model
