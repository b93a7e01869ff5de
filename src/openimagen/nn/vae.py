"""The KL autoencoder of latent diffusion (diffusers `AutoencoderKL`), with diffusers' key names.

    vae = AutoencoderKL(VAEConfig.from_diffusers_config(config))
    image = vae.decode(latents / cfg.scaling_factor)          # (B, 4, h, w) -> (B, 3, 4h, 4w) for the x4's VAE
    mean, logvar = vae.encode(image)

Rombach et al. 2022 (§3): a conv encoder to a small latent (mean and log-variance, `double_z`), a conv
decoder back; resnets without time embedding, one single-head attention in each middle block, every
GroupNorm at eps 1e-6. `quant_conv` / `post_quant_conv` are the 1x1 convs around the latent. Older files
spell the middle attention `query/key/value/proj_attn`; `upgrade_legacy_keys` renames them (the loader
calls it, so both spellings load strictly). Large decodes: `nn/vae_tiling.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .sd_blocks import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D

EPS = 1e-6
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class VAEConfigError(ValueError):
    """A VAE config that is not a diffusers `AutoencoderKL` we can build."""


@dataclass(frozen=True)
class VAEConfig:
    kind: ClassVar[str] = "vae"
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    mid_block_add_attention: bool = True
    force_upcast: bool = True               # decode in fp32 when the rest runs in half precision
    sample_size: int = 32                   # the tiling tile size in pixels (diffusers' tile_sample_min_size)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers_config(cls, d: dict) -> "VAEConfig":
        if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise VAEConfigError(f"_class_name={d['_class_name']!r}: expected 'AutoencoderKL' (a vae/config.json)")
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            bad = [t for t in d.get(key, [allowed]) if t != allowed]
            if bad:
                raise VAEConfigError(f"{key} {bad} is not supported; AutoencoderKL uses {allowed}")
        for key, default in (("act_fn", "silu"), ("use_quant_conv", True), ("use_post_quant_conv", True),
                             ("shift_factor", None), ("latents_mean", None), ("latents_std", None)):
            if d.get(key, default) != default:
                raise VAEConfigError(f"{key}={d[key]!r} is not supported (we build {key}={default!r})")
        sample = d.get("sample_size", 32)
        return cls(
            block_out_channels=tuple(d.get("block_out_channels", (64,))),
            layers_per_block=int(d.get("layers_per_block", 1)), in_channels=int(d.get("in_channels", 3)),
            out_channels=int(d.get("out_channels", 3)), latent_channels=int(d.get("latent_channels", 4)),
            norm_num_groups=int(d.get("norm_num_groups", 32)), scaling_factor=float(d.get("scaling_factor", 0.18215)),
            mid_block_add_attention=bool(d.get("mid_block_add_attention", True)),
            force_upcast=bool(d.get("force_upcast", True)),
            sample_size=int(sample[0] if isinstance(sample, (list, tuple)) else sample))


def upgrade_legacy_keys(state: dict) -> dict:
    """Rename the old attention keys (`...attentions.0.query.weight`) to today's (`...attentions.0.to_q.weight`)."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in LEGACY_ATTENTION:
            k = ".".join(parts[:-2] + [LEGACY_ATTENTION[parts[-2]], parts[-1]])
        out[k] = v
    return out


class _MidBlock(nn.Module):
    """resnet, attention, resnet at the latent side's widest level (keys `mid_block.*`)."""

    def __init__(self, c: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SpatialSelfAttention(c, groups=groups)]) if attention else None
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, None, groups=groups, eps=EPS) for _ in range(2)])

    def forward(self, h: Tensor) -> Tensor:
        h = self.resnets[0](h)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups=groups, eps=EPS)
                                      for i in range(n)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(cout, padding=0)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])

    def forward(self, h: Tensor) -> Tensor:
        for r in self.resnets:
            h = r(h)
        for name in ("downsamplers", "upsamplers"):
            if hasattr(self, name):
                h = getattr(self, name)[0](h)
        return h


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            _Block(chs[max(i - 1, 0)], c, cfg.layers_per_block, g, "down" if i < len(chs) - 1 else None)
            for i, c in enumerate(chs)])
        self.mid_block = _MidBlock(chs[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)   # mean and log-variance

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_out_channels[::-1], cfg.norm_num_groups   # widest first
        self.conv_in = nn.Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.mid_block = _MidBlock(chs[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList([
            _Block(chs[max(i - 1, 0)], c, cfg.layers_per_block + 1, g, "up" if i < len(chs) - 1 else None)
            for i, c in enumerate(chs)])
        self.conv_norm_out = nn.GroupNorm(g, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        h = h.to(self.up_blocks[0].resnets[0].conv1.weight.dtype)
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        L = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1)
        self.post_quant_conv = nn.Conv2d(L, L, 1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image (B, 3, H, W) in [-1, 1] -> (mean, logvar) of the latent, each (B, L, H/f, W/f), unscaled."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latent (B, L, h, w) -> image (B, 3, h*f, w*f), nominally in [-1, 1], unclamped."""
        return self.decoder(self.post_quant_conv(z))
