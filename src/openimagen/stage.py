"""One stage of a cascade: a U-Net with its noise schedule, parameterisation and sampling defaults.

`Stage.model` is where `nn/` (networks that know nothing about noise) meets `diffusion/` (math that
knows nothing about networks): it turns a U-Net into the denoiser contract of docs/architecture.md.
`Stage.unet_inputs` is the one translation of (x_t, t, conditioning) into a U-Net call, for sampling and
training alike; a super-resolution stage's low-res input is built by `lowres.py` for both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .config import ConfigError, rename_legacy
from .diffusion import SAMPLERS, THRESHOLDS, Denoised, Parameterization, ScheduleConfig, make_schedule
from .diffusion.noise import randn
from .lowres import RESIZE_MODES, LowresConditioning
from .nn.efficient_unet import EfficientUNet, EfficientUNetConfig
from .nn.if_unet import IFUNet, IFUNetConfig
from .nn.sd_unet import SDUNet, SDUNetConfig

# ----------------------------------------------------------------------------------------------
# Stage: one U-Net with its noise schedule, parameterisation and sampling defaults

UNET_CLASSES = {EfficientUNetConfig: EfficientUNet, IFUNetConfig: IFUNet, SDUNetConfig: SDUNet}  # config -> network


@dataclass(frozen=True)
class StageConfig:
    resolution: int
    unet: EfficientUNetConfig | IFUNetConfig | SDUNetConfig  # the U-Net's config; JSON "kind": "efficient" | "if" | "sd"
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="cosine"))
    parameterization: Parameterization = field(default_factory=Parameterization)
    lowres: bool = False                        # super-resolution stage: conditioned on the previous image
    lowres_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="linear"))
    noise_level: float = 0.2                    # SR: the low-res image's noise level when sampling (lowres_schedule)
    lowres_resize: str = "bilinear"             # how the previous image is resized: "bilinear" | "bicubic" | "nearest"
    lowres_align_corners: bool = False          # IF: bilinear with align_corners=True
    sampler: str = "ddpm"
    steps: int | str = 50                       # a count, or a named list such as "smart50" (discrete schedules)
    guidance: float = 5.0
    threshold: str = "dynamic"                  # "dynamic" | "static" | "none"
    threshold_percentile: float = 0.95
    threshold_max: float | None = None          # IF: 1.5 for stage I, 1.0 for stage II
    LEGACY: ClassVar[dict[str, str]] = {"lowres_aug": "noise_level"}  # retired keys -> their names now

    def __post_init__(self):
        if type(self.unet) not in UNET_CLASSES:
            raise ConfigError(f"StageConfig.unet must be one of {[c.__name__ for c in UNET_CLASSES]}, got "
                              f"{type(self.unet).__name__}; from_dict(StageConfig, data) reads a JSON stage")

    @classmethod
    def upgrade_json(cls, data: dict) -> dict:
        # The one reader of the legacy forms of a stage's JSON (model folders saved by older versions):
        # renamed keys (LEGACY), and `unet` as a bare dict whose class a sibling `unet_kind` named.
        data = rename_legacy(data, cls.LEGACY, "StageConfig")
        if "unet_kind" not in data:
            return data
        data = dict(data)
        kind = data.pop("unet_kind")
        if isinstance(data.get("unet"), dict):
            data["unet"] = {"kind": kind, **data["unet"]}
        return data

    @property
    def unet_kind(self) -> str:
        """The tag of `unet`, "efficient" or "if" (kept under the name of the field that the tag replaced)."""
        return self.unet.kind

    @property
    def extras(self) -> tuple:
        """The configs of the U-Net's extras (nn/extras.py); IF U-Nets have none."""
        return self.unet.extras if isinstance(self.unet, EfficientUNetConfig) else ()



def unet_class(config: EfficientUNetConfig | IFUNetConfig) -> type[torch.nn.Module]:
    """The network class that a U-Net config builds."""
    return UNET_CLASSES[type(config)]


class Stage(torch.nn.Module):
    """A U-Net plus everything needed to sample from it (schedule, parameterisation, defaults)."""

    def __init__(self, config: StageConfig, unet: torch.nn.Module | None = None):
        super().__init__()
        if config.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {config.sampler!r}; choose one of {sorted(SAMPLERS)}")
        if config.lowres_resize not in RESIZE_MODES:
            raise ConfigError(f"unknown lowres_resize {config.lowres_resize!r}; choose one of {list(RESIZE_MODES)}")
        if config.threshold not in THRESHOLDS:
            raise ConfigError(f"unknown threshold {config.threshold!r}; choose one of {list(THRESHOLDS)}")
        self.config = config
        self.schedule = make_schedule(config.schedule)
        self.lowres_schedule = make_schedule(config.lowres_schedule)
        self.lowres_cond = LowresConditioning(self.lowres_schedule, config.lowres_resize, config.lowres_align_corners)
        self.parameterization = config.parameterization
        if unet is None:
            unet = unet_class(config.unet)(config.unet)
        self.unet = unet

    @property
    def resolution(self) -> int:
        return self.config.resolution

    # What a latent stage (latent_stage.py) does differently; a pixel stage samples the image itself.
    lowres_noise_first = False  # RNG order: draw the low-res noise before the start state (diffusers' x4 upscaler)
    text_encoder = None         # a stage's own text encoder; None = the cascade's

    def sample_shape(self, batch: int, h: int, w: int) -> tuple[int, int, int, int]:
        """The shape the sampler works in for an (h, w) output image."""
        return (batch, 3, h, w)

    def output_size(self, lowres_hw: tuple[int, int]) -> tuple[int, int] | None:
        """A stage whose output size follows its input (h, w) says so here; None = sized by the request."""
        return None

    def finish(self, x: Tensor) -> Tensor:
        """The sampler's result as an image (B, 3, H, W) in [-1, 1] (a latent stage decodes it)."""
        return x

    def unet_inputs(self, x: Tensor, t: Tensor, cond: dict) -> dict:
        """The U-Net's arguments for x_t at t (schedule units) with conditioning `cond` (text_embeds,
        text_mask and, for SR stages, lowres and its noise_level): the one translation from
        the diffusion side's units to the network's, shared by sampling and training."""
        lowres, level = cond.get("lowres"), cond.get("noise_level")
        dtype = next(self.unet.parameters()).dtype  # fp16/bf16 weights get inputs of their dtype; state stays fp32
        return dict(
            x=x.to(dtype),
            time=self.schedule.model_time(t),
            text_embeds=cond["text_embeds"].to(dtype),
            text_mask=cond.get("text_mask"),
            lowres=None if lowres is None else lowres.to(dtype),
            noise_level=None if level is None else self.lowres_schedule.model_time(level),
        )

    def call_unet(self, x: Tensor, t: Tensor, cond: dict, net: torch.nn.Module | None = None) -> Tensor:
        """The U-Net's raw output; `net`: call this module instead of `self.unet` (a wrapper of it)."""
        a = self.unet_inputs(x, t, cond)
        net = self.unet if net is None else net  # not `net or`: a compiled module has no truth value
        return net(a["x"], a["time"], a["text_embeds"], a["text_mask"], lowres=a["lowres"],
                   noise_level=a["noise_level"])

    def model(self, x: Tensor, t: Tensor, cond: dict) -> Denoised:
        """The denoiser contract: x_t, t (schedule units) and conditioning -> Denoised."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        return self.parameterization.to_denoised(self.call_unet(x, t, cond).float(), x, alpha, sigma)

    def augment_lowres(self, lowres: Tensor, level: float, generator: torch.Generator | None,
                       size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Sampling's low-res input: the previous image resized to `size` (default: the stage's
        resolution) and noised to `level`, one draw fixed for every sampling step."""
        size = size or (self.resolution, self.resolution)
        level_t = torch.full((lowres.shape[0],), float(level), device=lowres.device)
        noise = randn((lowres.shape[0], lowres.shape[1], *size), generator, lowres.device)
        return self.lowres_cond(lowres, size, level_t, noise)
