"""A super-resolution stage that samples in a VAE's latent space: the Stable Diffusion x4 upscaler.

Latent diffusion (Rombach et al. 2022, §3-4) as DeepFloyd IF's stage III: the low-res image (B, 3, h, w)
is noised once at `noise_level` with its own schedule (`lowres_schedule`, the pipeline's `low_res_scheduler`)
and concatenated to latents of the *same* h x w (B, 4, h, w); the U-Net, told the level as a class label,
predicts v (Salimans & Ho 2022) with CLIP text; the VAE decodes the final latents / scaling_factor to a
(B, 3, 4h, 4w) image. Numerics and RNG order are those of diffusers' `StableDiffusionUpscalePipeline`
(stage3_and_editing.md §1.3): the low-res noise is drawn first, then the latents; sizes that are not a
multiple of the VAE's factor are rounded down (nearest-neighbour resize, diffusers' rule for tensors).

Everything else is an ordinary `Stage`: sample_stage runs it with any sampler, guidance and editing seam.
The VAE runs in float32 when its config says `force_upcast` (its decoder overflows in fp16), whatever the
U-Net's dtype; large latents decode in overlapping tiles (nn/vae_tiling.py).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from .nn.vae import AutoencoderKL
from .nn.vae_tiling import decode_tiled
from .stage import Stage, StageConfig

log = logging.getLogger("openimagen")


class LatentStage(Stage):
    lowres_noise_first = True  # diffusers' upscale pipeline: the low-res image's noise, then the latents

    def __init__(self, config: StageConfig, unet: torch.nn.Module, vae: AutoencoderKL, *, text_encoder=None,
                 max_noise_level: float = 350, tile_latents_above: int | None = 128):
        super().__init__(config, unet)
        if config.unet.in_channels != vae.cfg.latent_channels + 3:
            raise ValueError(f"the U-Net takes {config.unet.in_channels} channels but the VAE's latents ({vae.cfg.latent_channels})"
                             " plus the low-res image (3) make " f"{vae.cfg.latent_channels + 3}; the folder mixes models")
        self.vae = vae
        self.text_encoder = text_encoder
        self.max_noise_level = float(max_noise_level)
        self.tile_latents_above = tile_latents_above  # decode in tiles when a latent side exceeds this (None: never)

    @property
    def factor(self) -> int:
        return self.vae.cfg.downscale

    def output_size(self, lowres_hw: tuple[int, int]) -> tuple[int, int]:
        """The output (H, W) for a low-res input (h, w): f x (h, w) rounded down to multiples of f."""
        f = self.factor
        h, w = (int(v) for v in lowres_hw)
        if h < f or w < f:
            raise ValueError(f"the x{f} upscaler's VAE needs an input of at least {f}x{f} pixels, got {h}x{w}; "
                             "enlarge the image first")
        if h % f or w % f:
            log.info("the %dx%d input is cut to %dx%d (multiples of %d), as diffusers does", h, w, h - h % f, w - w % f, f)
        return (h - h % f) * f, (w - w % f) * f

    def sample_shape(self, batch: int, h: int, w: int) -> tuple[int, int, int, int]:
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"a latent stage's output must be a multiple of {f}, got {h}x{w}")
        return (batch, self.vae.cfg.latent_channels, h // f, w // f)

    @property
    def level_max(self) -> float:
        """The largest noise level accepted: max_noise_level, and below the U-Net's number of class labels."""
        labels = self.config.unet.num_class_embeds
        return self.max_noise_level if labels is None else min(self.max_noise_level, labels - 1)

    def augment_lowres(self, lowres: Tensor, level: float, generator, size=None):
        if not 0 <= float(level) <= self.level_max:
            raise ValueError(f"noise_level {level} is outside 0..{self.level_max:g}, the levels this upscaler "
                             "takes (max_noise_level); IF's documents use 100, diffusers' default is 20")
        return super().augment_lowres(lowres, level, generator, size)

    @torch.no_grad()
    def finish(self, x: Tensor) -> Tensor:
        """Decode the final latents: vae.decode(x / scaling_factor), in the VAE's own dtype (fp32 when upcast)."""
        dtype = next(self.vae.parameters()).dtype
        z = (x / self.vae.cfg.scaling_factor).to(dtype)
        big = self.tile_latents_above is not None and max(z.shape[-2:]) > self.tile_latents_above
        return (decode_tiled(self.vae, z) if big else self.vae.decode(z)).float()
