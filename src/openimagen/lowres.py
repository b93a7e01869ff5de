"""How a super-resolution stage sees the previous stage's image: resized the stage's way, then noised.

Noise-conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models", §4.1; Imagen, Saharia et
al. 2022, §2.4): the low-res image is enlarged to the stage's size and noised to a level drawn per sample
during training and fixed (the stage's `noise_level`) when sampling; the U-Net is told the level.
Training (train/loop.py) and sampling (Stage.augment_lowres) both go through `LowresConditioning`, so a
stage is trained on exactly the inputs it sees when sampling (IF stage II: bilinear, align_corners=True).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .diffusion import Schedule, q_sample
from .diffusion.noise import rand

RESIZE_MODES = ("bilinear", "bicubic", "nearest")


class LowresConditioning:
    def __init__(self, schedule: Schedule, resize: str = "bilinear", align_corners: bool = False):
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown lowres_resize {resize!r}; choose one of {list(RESIZE_MODES)}")
        self.schedule = schedule          # the noise levels' own schedule (IF: its image_noising_scheduler)
        self.resize_mode = resize
        self.align_corners = align_corners if resize != "nearest" else None

    def resize(self, lowres: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, 3, h, w) -> (B, 3, *size), float32."""
        return F.interpolate(lowres.float(), size=size, mode=self.resize_mode, align_corners=self.align_corners)

    def __call__(self, lowres: Tensor, size: tuple[int, int], level: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """The U-Net's low-res input and its level: q_sample(resize(lowres), level). level: (B,) in
        the noise schedule's units; noise: (B, 3, *size)."""
        up = self.resize(lowres, size)
        return q_sample(up, level, self.schedule, noise), level

    def training_levels(self, batch: int, generator: torch.Generator, level_max: float | None, device) -> Tensor:
        """(B,) random levels for a training batch: the schedule's own distribution, or uniform in
        [0, level_max] (whole numbers for a discrete schedule)."""
        if level_max is None:
            return self.schedule.sample_t(batch, generator=generator).to(device)
        u = rand((batch,), generator, device)
        if self.schedule.config.discrete:
            return (u * (level_max + 1)).floor().clamp(max=level_max)
        return u * level_max
