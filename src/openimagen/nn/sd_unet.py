"""Stable Diffusion's U-Net (diffusers `UNet2DConditionModel`, the SD x4 upscaler's), with diffusers' key names.

    cfg = SDUNetConfig.from_diffusers_config(config)    # the dict of a diffusers unet/config.json
    unet = SDUNet(cfg)
    out = unet(cat([latents, noised_low_res]), t, clip_embeds, class_labels=noise_level)   # (B, 4, h, w): v

Latent diffusion (Rombach et al. 2022): resnet levels, the middle ones with transformer blocks attending
to the text (`Transformer2D`); the x4 upscaler concatenates the noised low-res image to the latents
(7 input channels) and embeds its noise level as a class label (`class_embedding`, an nn.Embedding of
`num_class_embeds`). Only the block types the SD family's upscaler / text-to-image U-Nets use are built;
anything else in a config is refused by name. Returns raw output; no file IO (io/diffusers.py reads folders).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import timestep_embedding  # [cos, sin]: diffusers' flip_sin_to_cos=True, freq_shift=0
from .sd_blocks import Downsample2D, ResnetBlock2D, Transformer2D, Upsample2D

DOWN_TYPES = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}  # name -> has transformer blocks
UP_TYPES = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
MID_TYPE = "UNetMidBlock2DCrossAttn"
# diffusers config keys whose value we require: (diffusers' default when absent, the value we implement)
_REQUIRED = {
    "act_fn": ("silu", "silu"), "flip_sin_to_cos": (True, True), "freq_shift": (0, 0),
    "center_input_sample": (False, False), "dual_cross_attention": (False, False),
    "mid_block_type": (MID_TYPE, MID_TYPE), "upcast_attention": (False, False),
    "class_embed_type": (None, None), "addition_embed_type": (None, None),
    "time_embedding_type": ("positional", "positional"), "resnet_time_scale_shift": ("default", "default"),
    "attention_type": ("default", "default"), "encoder_hid_dim": (None, None), "time_cond_proj_dim": (None, None),
    "timestep_post_act": (None, None), "time_embedding_dim": (None, None), "class_embeddings_concat": (False, False),
    "conv_in_kernel": (3, 3), "conv_out_kernel": (3, 3), "mid_block_scale_factor": (1, 1),
    "resnet_out_scale_factor": (1.0, 1.0), "cross_attention_norm": (None, None),
}


class SDConfigError(ValueError):
    """A U-Net config that is not a Stable-Diffusion-style diffusers `UNet2DConditionModel` we can build."""


@dataclass(frozen=True)
class SDUNetConfig:
    kind: ClassVar[str] = "sd"  # the JSON tag of a U-Net config (config.py)
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int = 2
    heads: tuple[int, ...] = (8,)             # attention heads per level (diffusers' `attention_head_dim` quirk)
    cross_attention_dim: int = 1024
    only_cross_attention: tuple[bool, ...] = (False,)
    use_linear_projection: bool = False
    num_class_embeds: int | None = None       # x4 upscaler: 1000 noise levels
    transformer_layers: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    downsample_padding: int = 1
    dropout: float = 0.0
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int | None = None

    def __post_init__(self):
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types", "heads", "only_cross_attention"):
            if len(getattr(self, name)) != n:
                raise SDConfigError(f"{name} has {len(getattr(self, name))} entries for {n} levels")
        for t, known in [*((t, DOWN_TYPES) for t in self.down_block_types), *((t, UP_TYPES) for t in self.up_block_types)]:
            if t not in known:
                raise SDConfigError(f"unsupported block type {t!r}: supported are {sorted(DOWN_TYPES)} down, "
                                    f"{sorted(UP_TYPES)} up, {MID_TYPE} in the middle")

    @property
    def time_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def text_dim(self) -> int:
        return self.cross_attention_dim

    @classmethod
    def from_diffusers_config(cls, d: dict) -> "SDUNetConfig":
        """Parse a diffusers `unet/config.json` dict with diffusers' defaults for absent keys."""
        if not isinstance(d, dict):
            raise SDConfigError(f"expected a config dict, got {type(d).__name__}")
        if d.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
            raise SDConfigError(f"_class_name={d['_class_name']!r}: expected 'UNet2DConditionModel'")
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if key not in d:
                raise SDConfigError(f"config lacks {key!r}; is this a diffusers unet/config.json?")
        for key, (default, wanted) in _REQUIRED.items():
            if d.get(key, default) != wanted:
                raise SDConfigError(f"{key}={d.get(key, default)!r} is not supported (we build {key}={wanted!r})")
        n = len(d["block_out_channels"])
        per = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * n  # noqa: E731
        heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)  # diffusers' naming quirk
        for key in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block"):
            v = d.get(key)
            if isinstance(v, (list, tuple)):
                raise SDConfigError(f"{key}={v}: per-level values are not supported, use one int")
        mid_oc = d.get("mid_block_only_cross_attention")
        oc = d.get("only_cross_attention", False)
        if mid_oc not in (None, False) or (mid_oc is None and oc is True):
            raise SDConfigError("a cross-attention-only middle block is not supported")
        sample = d.get("sample_size")
        return cls(
            block_out_channels=tuple(d["block_out_channels"]),
            down_block_types=tuple(d["down_block_types"]), up_block_types=tuple(d["up_block_types"]),
            layers_per_block=int(d.get("layers_per_block", 2)), heads=per(heads),
            cross_attention_dim=int(d.get("cross_attention_dim", 1280)), only_cross_attention=per(oc),
            use_linear_projection=bool(d.get("use_linear_projection", False)),
            num_class_embeds=d.get("num_class_embeds"),
            transformer_layers=int(d.get("transformer_layers_per_block", 1)),
            norm_num_groups=int(d.get("norm_num_groups", 32)), norm_eps=float(d.get("norm_eps", 1e-5)),
            downsample_padding=int(d.get("downsample_padding", 1)), dropout=float(d.get("dropout", 0.0)),
            in_channels=int(d.get("in_channels", 4)), out_channels=int(d.get("out_channels", 4)),
            sample_size=sample[0] if isinstance(sample, (list, tuple)) else sample,
        )

    def to_diffusers_config(self) -> dict:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        d["attention_head_dim"] = d.pop("heads")
        d["transformer_layers_per_block"] = d.pop("transformer_layers")
        d.update({k: wanted for k, (_, wanted) in _REQUIRED.items()})
        d["_class_name"] = "UNet2DConditionModel"
        return d


# ----------------------------------------------------------------------------- blocks


class _Level(nn.Module):
    """One down or up block: resnets, each followed by a transformer when the block has attention."""

    def __init__(self, cins: list[int], cout: int, cfg: SDUNetConfig, *, attn: bool, heads: int, only_cross: bool,
                 n_attn: int | None = None):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        if attn:  # registered first, as in diffusers (state-dict order; names are what matter)
            self.attentions = nn.ModuleList([
                Transformer2D(cout, heads, cfg.cross_attention_dim, groups=g, linear=cfg.use_linear_projection,
                              only_cross=only_cross, layers=cfg.transformer_layers) for _ in range(n_attn or len(cins))])
        else:
            self.attentions = None
        self.resnets = nn.ModuleList([ResnetBlock2D(c, cout, cfg.time_dim, groups=g, eps=eps, dropout=cfg.dropout)
                                      for c in cins])

    def layer(self, i: int, h: Tensor, emb: Tensor, ctx: Tensor) -> Tensor:
        h = self.resnets[i](h, emb)
        return h if self.attentions is None else self.attentions[i](h, ctx)


class SDUNet(nn.Module):
    def __init__(self, cfg: SDUNetConfig):
        super().__init__()
        self.cfg = cfg
        chs, n, T = cfg.block_out_channels, len(cfg.block_out_channels), cfg.time_dim
        L = cfg.layers_per_block
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = nn.ModuleDict({"linear_1": nn.Linear(chs[0], T), "linear_2": nn.Linear(T, T)})
        self.class_embedding = nn.Embedding(cfg.num_class_embeds, T) if cfg.num_class_embeds else None

        self.down_blocks = nn.ModuleList()
        skips = [chs[0]]  # channels of every skip pushed, in push order
        for i, kind in enumerate(cfg.down_block_types):
            cin = chs[max(i - 1, 0)]
            block = _Level([cin] + [chs[i]] * (L - 1), chs[i], cfg, attn=DOWN_TYPES[kind], heads=cfg.heads[i],
                           only_cross=cfg.only_cross_attention[i])
            last = i == n - 1
            block.downsamplers = None if last else nn.ModuleList([Downsample2D(chs[i], cfg.downsample_padding)])
            self.down_blocks.append(block)
            skips += [chs[i]] * (L + (0 if last else 1))

        self.mid_block = _Level([chs[-1], chs[-1]], chs[-1], cfg, attn=True, heads=cfg.heads[-1], only_cross=False,
                                n_attn=1)  # resnet, attention, resnet

        self.up_blocks = nn.ModuleList()
        prev = chs[-1]
        for i, kind in enumerate(cfg.up_block_types):
            level = n - 1 - i
            taken, skips = skips[-(L + 1):][::-1], skips[:-(L + 1)]
            cins = [(prev if j == 0 else chs[level]) + s for j, s in enumerate(taken)]
            block = _Level(cins, chs[level], cfg, attn=UP_TYPES[kind], heads=cfg.heads[level],
                           only_cross=cfg.only_cross_attention[level])
            block.upsamplers = nn.ModuleList([Upsample2D(chs[level])]) if level > 0 else None
            self.up_blocks.append(block)
            prev = chs[level]
        assert not skips, "every encoder skip is consumed by the decoder"
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chs[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    def forward(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                text_mask: Tensor | None = None, lowres: Tensor | None = None,
                noise_level: Tensor | float | None = None, class_labels: Tensor | None = None) -> Tensor:
        """sample (B, in, h, w), timestep (B,) or scalar, text (B, L, D) -> (B, out, h, w) raw output.

        The engine's call (`Stage.unet_inputs`): `lowres` (B, 3, h, w) is concatenated after the latents
        (diffusers' channel order) and `noise_level` is the class label; diffusers' `class_labels=` works too.
        `text_mask` is ignored: SD attends to all 77 CLIP positions, pads included. Any h, w works
        (upsamplers follow the skips' sizes).
        """
        if lowres is not None:
            sample = torch.cat([sample, lowres.to(sample.dtype)], dim=1)   # (B, 4 + 3, h, w)
        if noise_level is not None:
            class_labels = noise_level
        cfg, B, dtype = self.cfg, sample.shape[0], sample.dtype
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be (B, {cfg.in_channels}, H, W), got {tuple(sample.shape)}")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(B) if t.ndim == 0 else t                                 # (B,)
        emb = timestep_embedding(t, cfg.block_out_channels[0]).to(dtype)
        emb = self.time_embedding["linear_2"](F.silu(self.time_embedding["linear_1"](emb)))   # (B, T)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this U-Net embeds a noise level: pass noise_level (diffusers: class_labels)")
            labels = torch.as_tensor(class_labels, device=sample.device)
            labels = labels.expand(B) if labels.ndim == 0 else labels
            emb = emb + self.class_embedding(labels.round().long()).to(dtype)
        ctx = encoder_hidden_states.to(dtype)

        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            for i in range(len(block.resnets)):
                h = block.layer(i, h, emb, ctx)
                skips.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, emb)
        h = self.mid_block.attentions[0](h, ctx)
        h = self.mid_block.resnets[1](h, emb)
        for block in self.up_blocks:
            for i in range(len(block.resnets)):
                h = block.layer(i, torch.cat([h, skips.pop()], dim=1), emb, ctx)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h, tuple(skips[-1].shape[-2:]))  # to the next skip's size (odd sizes)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
