"""Diffusion math: schedules, the denoiser contract, losses, samplers and guidance wrappers.

Knows nothing about networks; `stage.py` (`Stage.model`) joins it to `nn/`.
"""
from .forward import q_sample
from .guidance import THRESHOLDS, Model, classifier_free_guidance, dynamic_threshold, static_threshold, thresholding
from .losses import diffusion_loss, min_snr_weight, vlb_term
from .parameterization import (
    Denoised,
    Denoiser,
    Parameterization,
    eps_from_x0,
    learned_range_logvar,
    x0_from_eps,
)
from .samplers import SAMPLERS, Callback, Step, ddim, ddpm, dpmpp_2m, dpmpp_3m
from .schedules import (
    IF_RESPACINGS,
    SCHEDULES,
    Schedule,
    ScheduleConfig,
    as_timesteps,
    gaussian_posterior,
    make_schedule,
    respaced_timesteps,
)

__all__ = [
    "Denoised", "Denoiser", "Model", "Parameterization", "Schedule", "ScheduleConfig",
    "SCHEDULES", "SAMPLERS", "IF_RESPACINGS",
    "make_schedule", "respaced_timesteps", "as_timesteps", "gaussian_posterior",
    "x0_from_eps", "eps_from_x0", "learned_range_logvar",
    "diffusion_loss", "min_snr_weight", "vlb_term",
    "ddpm", "ddim", "dpmpp_2m", "dpmpp_3m",
    "classifier_free_guidance", "dynamic_threshold", "static_threshold", "thresholding", "THRESHOLDS",
    "q_sample", "Step", "Callback",
]
