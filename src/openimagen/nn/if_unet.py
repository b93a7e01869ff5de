"""The DeepFloyd IF U-Net (stage I and stage II), with module names that load diffusers `unet/` weights.

    cfg = IFUNetConfig.from_diffusers_config(config)   # the dict of a diffusers unet/config.json
    unet = IFUNet(cfg)                  # with weights: checkpoints.deepfloyd_if.load_if_unet("IF-I-XL-v1.0")
    out = unet(x_t, t, t5_embeds)                      # (B, 6, H, W): eps in [:3], variance value v in [3:]
    out = sr_unet(cat([x_t, up]), t, t5, noise_level=level)            # stage II (diffusers: class_labels=)

Module names reproduce diffusers' `UNet2DConditionModel` state-dict keys exactly, so checkpoints load
strictly with no key map (docs/reference/deepfloyd_if.md §2). Only the block types IF uses are
implemented; the config parser rejects anything else instead of building something subtly different.
The U-Net returns raw output; eps/variance handling lives in diffusion/. No file IO here: io/diffusers.py
reads the folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .if_blocks import DownBlock, MidBlock, TextTimeEmbedding, TimestepEmbedding, UpBlock, sampling_layout
from .layers import timestep_embedding  # the same [cos, sin] sinusoid diffusers uses for IF (flip_sin_to_cos, shift 0)

DOWN_TYPES = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}  # name -> has attention
UP_TYPES = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
MID_TYPE = "UNetMidBlock2DSimpleCrossAttn"

# diffusers config keys whose value we require (diffusers' own default when the key is absent, what we need).
_REQUIRED_VALUES = {
    "act_fn": ("silu", "gelu"),
    "flip_sin_to_cos": (True, True),
    "freq_shift": (0, 0),
    "time_embedding_type": ("positional", "positional"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", MID_TYPE),
    "center_input_sample": (False, False),
    "dual_cross_attention": (False, False),
    "num_attention_heads": (None, None),
    "num_class_embeds": (None, None),
    "timestep_post_act": (None, None),
    "time_cond_proj_dim": (None, None),
    "attention_type": ("default", "default"),
    "class_embeddings_concat": (False, False),
}


class IFConfigError(ValueError):
    """A U-Net config that is not a DeepFloyd-IF-style diffusers `UNet2DConditionModel`."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class IFUNetConfig:
    """Everything that shapes an IF U-Net; per-level tuples are in encoder (down) order."""

    kind: ClassVar[str] = "if"  # the JSON tag of a StageConfig.unet (config.py)
    block_out_channels: tuple[int, ...]  # C per level, e.g. (704, 1408, 2112, 2816)
    layers_per_block: tuple[int, ...]  # resnets per encoder level; decoder levels get reversed + 1
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    attention_head_dim: int = 64  # channels per head (diffusers' name notwithstanding)
    cross_attention_dim: int = 1280  # text width seen by attention (after encoder_hid_proj)
    encoder_hid_dim: int | None = None  # raw text width (T5-XXL 4096); None = no encoder_hid_proj
    addition_embed_type: str | None = "text"  # pooled text added to the time embedding
    addition_embed_type_num_heads: int = 64
    class_embed_type: str | None = None  # "timestep": stage II noise-augmentation level
    time_embedding_dim: int | None = None  # None -> 4 * block_out_channels[0]
    time_embedding_act_fn: str | None = None  # "gelu": one GELU on the summed embedding (IF-II)
    resnet_skip_time_act: bool = False  # True: resnets see that embedding without their own GELU
    resnet_out_scale_factor: float = 1.0
    mid_block_scale_factor: float = 1.0
    only_cross_attention: tuple[bool, ...] | bool = False  # per level or for all
    mid_block_only_cross_attention: bool | None = None  # None -> only_cross_attention if a bool, else False
    cross_attention_norm: str | None = "group_norm"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 6
    sample_size: int | tuple[int, int] | None = 64
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n or len(self.layers_per_block) != n:
            raise IFConfigError(
                f"block_out_channels ({n} levels), down_block_types ({len(self.down_block_types)}), up_block_types "
                f"({len(self.up_block_types)}) and layers_per_block ({len(self.layers_per_block)}) must have one "
                "entry per level")
        for t, known in [*((t, DOWN_TYPES) for t in self.down_block_types), *((t, UP_TYPES) for t in self.up_block_types)]:
            if t not in known:
                raise IFConfigError(
                    f"unsupported block type {t!r}: only DeepFloyd-IF-style configs are supported "
                    f"(blocks {sorted(DOWN_TYPES)} down, {sorted(UP_TYPES)} up, {MID_TYPE} in the middle)")
        if isinstance(self.only_cross_attention, tuple) and len(self.only_cross_attention) != n:
            raise IFConfigError(f"only_cross_attention has {len(self.only_cross_attention)} entries for {n} levels")
        for name, value, allowed in [("class_embed_type", self.class_embed_type, (None, "timestep")),
                                     ("addition_embed_type", self.addition_embed_type, (None, "text")),
                                     ("time_embedding_act_fn", self.time_embedding_act_fn, (None, "gelu")),
                                     ("cross_attention_norm", self.cross_attention_norm, (None, "group_norm"))]:
            if value not in allowed:
                raise IFConfigError(f"{name}={value!r} is not supported; IF U-Nets use one of {allowed}")
        if self.norm_eps <= 0 or self.norm_num_groups <= 0:
            raise IFConfigError(f"norm_num_groups={self.norm_num_groups} and norm_eps={self.norm_eps} must be positive")

    # -- resolved values ---------------------------------------------------------------
    @property
    def time_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def text_dim(self) -> int:
        """Width of the `encoder_hidden_states` the U-Net is called with."""
        return self.encoder_hid_dim or self.cross_attention_dim

    def level_only_cross(self) -> tuple[bool, ...]:
        oc = self.only_cross_attention
        return oc if isinstance(oc, tuple) else (oc,) * len(self.block_out_channels)

    def mid_only_cross(self) -> bool:
        if self.mid_block_only_cross_attention is not None:
            return self.mid_block_only_cross_attention
        return self.only_cross_attention if isinstance(self.only_cross_attention, bool) else False

    # -- diffusers config.json ------------------------------------------------------------
    @classmethod
    def from_diffusers_config(cls, d: dict) -> "IFUNetConfig":
        """Parse a diffusers `unet/config.json` dict, applying diffusers' defaults for absent keys.

        Keys that do not change an IF U-Net (`_class_name`, `use_linear_projection`, ...) are ignored;
        values that would need a module we do not implement raise IFConfigError naming the key.
        """
        if not isinstance(d, dict):
            raise IFConfigError(f"expected a config dict, got {type(d).__name__}")
        name = d.get("_class_name", "UNet2DConditionModel")
        if name != "UNet2DConditionModel":
            raise IFConfigError(f"_class_name={name!r}: expected 'UNet2DConditionModel' (a DeepFloyd-IF unet/config.json)")
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if key not in d:
                raise IFConfigError(f"config lacks {key!r}; is this a diffusers unet/config.json?")
        for key, (default, wanted) in _REQUIRED_VALUES.items():
            value = d.get(key, default)
            if value != wanted:
                raise IFConfigError(f"{key}={value!r} is not supported: only DeepFloyd-IF-style configs "
                                    f"({key}={wanted!r}) are supported")
        n = len(d["block_out_channels"])
        lpb = d.get("layers_per_block", 2)
        head = d.get("attention_head_dim", 8)
        if isinstance(head, (list, tuple)):
            # diffusers indexes this list in encoder order for decoder levels too; a uniform list is unambiguous
            if len(set(head)) != 1:
                raise IFConfigError(f"attention_head_dim={head}: per-level head widths are not supported, use one int")
            head = head[0]
        xdim = d.get("cross_attention_dim", 1280)
        if isinstance(xdim, (list, tuple)):
            if len(set(xdim)) != 1:
                raise IFConfigError(f"cross_attention_dim={xdim}: per-level widths are not supported, use one int")
            xdim = xdim[0]
        hid_type = d.get("encoder_hid_dim_type")
        if d.get("encoder_hid_dim") is None and hid_type is not None:
            raise IFConfigError(f"encoder_hid_dim_type={hid_type!r} needs encoder_hid_dim")
        if hid_type not in (None, "text_proj"):
            raise IFConfigError(f"encoder_hid_dim_type={hid_type!r} is not supported; IF uses 'text_proj'")
        if d.get("norm_num_groups", 32) is None:
            raise IFConfigError("norm_num_groups=None is not supported; IF uses 32")
        oc = d.get("only_cross_attention", False)
        sample = d.get("sample_size")
        return cls(
            block_out_channels=tuple(d["block_out_channels"]),
            layers_per_block=tuple(lpb) if isinstance(lpb, (list, tuple)) else (lpb,) * n,
            down_block_types=tuple(d["down_block_types"]),
            up_block_types=tuple(d["up_block_types"]),
            attention_head_dim=head,
            cross_attention_dim=xdim,
            encoder_hid_dim=d.get("encoder_hid_dim"),
            addition_embed_type=d.get("addition_embed_type"),
            addition_embed_type_num_heads=d.get("addition_embed_type_num_heads", 64),
            class_embed_type=d.get("class_embed_type"),
            time_embedding_dim=d.get("time_embedding_dim"),
            time_embedding_act_fn=d.get("time_embedding_act_fn"),
            resnet_skip_time_act=d.get("resnet_skip_time_act", False),
            resnet_out_scale_factor=float(d.get("resnet_out_scale_factor", 1.0)),
            mid_block_scale_factor=float(d.get("mid_block_scale_factor", 1.0)),
            only_cross_attention=tuple(oc) if isinstance(oc, (list, tuple)) else oc,
            mid_block_only_cross_attention=d.get("mid_block_only_cross_attention"),
            cross_attention_norm=d.get("cross_attention_norm"),
            norm_num_groups=d.get("norm_num_groups", 32),
            norm_eps=d.get("norm_eps", 1e-5),
            dropout=d.get("dropout", 0.0),
            in_channels=d.get("in_channels", 4),
            out_channels=d.get("out_channels", 4),
            sample_size=tuple(sample) if isinstance(sample, (list, tuple)) else sample,
            conv_in_kernel=d.get("conv_in_kernel", 3),
            conv_out_kernel=d.get("conv_out_kernel", 3),
        )

    def to_diffusers_config(self) -> dict:
        """The `unet/config.json` dict diffusers' UNet2DConditionModel builds the same network from."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        d.update({k: wanted for k, (_, wanted) in _REQUIRED_VALUES.items()})
        d["_class_name"] = "UNet2DConditionModel"
        if self.encoder_hid_dim is not None:
            d["encoder_hid_dim_type"] = "text_proj"
        return d


def if_stage(cfg: IFUNetConfig) -> int:
    """1 for a base (stage I) U-Net, 2 for a super-resolution (stage II) one.

    Stage II embeds the noise-augmentation level (`class_embed_type="timestep"`) and takes the noisy
    image concatenated with the upsampled low-resolution image (`in_channels = 2 * image channels`).
    """
    image_channels = cfg.out_channels // 2 if cfg.out_channels % 2 == 0 else cfg.out_channels
    sr_embed = cfg.class_embed_type == "timestep"
    sr_input = cfg.in_channels == 2 * image_channels
    if sr_embed and sr_input:
        return 2
    if not sr_embed and not sr_input:
        return 1
    raise IFConfigError(
        f"cannot tell the stage: class_embed_type={cfg.class_embed_type!r} with in_channels={cfg.in_channels}; "
        f"stage I has (None, {image_channels}), stage II has ('timestep', {2 * image_channels})")


# ----------------------------------------------------------------------------- model


class IFUNet(nn.Module):
    def __init__(self, cfg: IFUNetConfig):
        super().__init__()
        self.cfg = cfg
        chs, n = cfg.block_out_channels, len(cfg.block_out_channels)
        c0, T = chs[0], cfg.time_dim
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, cfg.conv_in_kernel, padding=cfg.conv_in_kernel // 2)
        self.time_embedding = TimestepEmbedding(c0, T)
        self.encoder_hid_proj = nn.Linear(cfg.encoder_hid_dim, cfg.cross_attention_dim) if cfg.encoder_hid_dim else None
        self.class_embedding = TimestepEmbedding(c0, T) if cfg.class_embed_type == "timestep" else None
        self.add_embedding = (TextTimeEmbedding(cfg.text_dim, T, cfg.addition_embed_type_num_heads)
                              if cfg.addition_embed_type == "text" else None)

        common = dict(temb=T, groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout,
                      text_dim=cfg.cross_attention_dim, head_dim=cfg.attention_head_dim,
                      text_norm=cfg.cross_attention_norm == "group_norm")
        only_cross = cfg.level_only_cross()
        skip_chs = [c0]  # widths of the skips the encoder pushes, in push order
        self.down_blocks = nn.ModuleList()
        for i, (kind, c) in enumerate(zip(cfg.down_block_types, chs)):
            last = i == n - 1
            self.down_blocks.append(DownBlock(
                chs[max(i - 1, 0)], c, cfg.layers_per_block[i], attn=DOWN_TYPES[kind], downsample=not last,
                out_scale=cfg.resnet_out_scale_factor, only_cross=only_cross[i], **common))
            skip_chs += [c] * (cfg.layers_per_block[i] + (0 if last else 1))
        self.mid_block = MidBlock(chs[-1], out_scale=cfg.mid_block_scale_factor, only_cross=cfg.mid_only_cross(),
                                  **common)
        self.up_blocks = nn.ModuleList()
        cin = chs[-1]
        for i, kind in enumerate(cfg.up_block_types):
            level = n - 1 - i
            k = cfg.layers_per_block[level] + 1
            skip_chs, taken = skip_chs[:-k], skip_chs[-k:]
            self.up_blocks.append(UpBlock(
                cin, chs[level], taken[::-1], attn=UP_TYPES[kind], upsample=level > 0,
                out_scale=cfg.resnet_out_scale_factor, only_cross=only_cross[level], **common))
            cin = chs[level]
        assert not skip_chs, "every encoder skip is consumed by the decoder"
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, cfg.conv_out_kernel, padding=cfg.conv_out_kernel // 2)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                text_mask: Tensor | None = None, lowres: Tensor | None = None,
                noise_level: Tensor | float | None = None, class_labels: Tensor | float | None = None) -> Tensor:
        """sample (B, in, H, W), timestep (B,) or scalar, text (B, L, text_dim) -> (B, out, H, W) raw output.

        `noise_level` is stage II's noise-augmentation level (e.g. 250), (B,) or scalar; `class_labels` is
        diffusers' name for it, accepted too. The engine's U-Net signature (`Stage.unet_inputs`) works as
        is: `lowres` (B, 3, H, W), the upsampled and noised image, is concatenated to `sample`'s channels.
        `text_mask` is ignored on purpose: IF was trained attending over all 77 T5 positions, pads included.
        """
        if lowres is not None:
            sample = torch.cat([sample, lowres.to(sample.dtype)], dim=1)  # (B, 3 + 3, H, W), diffusers' order
        if noise_level is not None:
            if class_labels is not None:
                raise ValueError("pass the noise-augmentation level once: noise_level or class_labels "
                                 "(diffusers' name for it), not both")
            class_labels = noise_level
        cfg, B = self.cfg, sample.shape[0]
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be (B, {cfg.in_channels}, H, W), got {tuple(sample.shape)}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != cfg.text_dim:
            raise ValueError(f"encoder_hidden_states must be (B, L, {cfg.text_dim}), "
                             f"got {tuple(encoder_hidden_states.shape)}")
        c0, dtype = cfg.block_out_channels[0], sample.dtype

        emb = self.time_embedding(timestep_embedding(_per_sample(timestep, B, sample.device), c0).to(dtype))  # (B, T)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this stage-II U-Net needs noise_level (diffusers: class_labels): the "
                                 "noise-augmentation level (e.g. 250)")
            level = timestep_embedding(_per_sample(class_labels, B, sample.device), c0).to(dtype)
            emb = emb + self.class_embedding(level)
        if self.add_embedding is not None:
            emb = emb + self.add_embedding(encoder_hidden_states)  # pooled raw text, before encoder_hid_proj
        if cfg.time_embedding_act_fn == "gelu":
            emb = F.gelu(emb)
        res_emb = emb if cfg.resnet_skip_time_act else F.gelu(emb)  # what every resnet's time_emb_proj reads
        ctx = self.encoder_hid_proj(encoder_hidden_states) if self.encoder_hid_proj is not None \
            else encoder_hidden_states  # (B, L, cross_attention_dim)

        sample = sampling_layout(sample, self.conv_in.weight)  # on the CPU without autograd: NHWC or NCHW
        h = self.conv_in(sample)  # (B, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, pushed = self._call(block, h, res_emb, ctx)
            skips += pushed
        h = self._call(self.mid_block, h, res_emb, ctx)
        for block in self.up_blocks:
            k = len(block.resnets)
            size = tuple(skips[-k - 1].shape[-2:]) if len(skips) > k else None  # upsample to the next skip's size
            if self._checkpointing():  # the recomputation needs the skips again: hand over tensors, not the list
                taken, skips = skips[-k:], skips[:-k]
                h = torch.utils.checkpoint.checkpoint(
                    _up_from_tensors, block, res_emb, ctx, size, h, *taken, use_reentrant=False)
            else:
                h = block(h, skips, res_emb, ctx, size)  # pops its k skips: each is freed once used
        return self.conv_out(F.gelu(self.conv_norm_out(h))).contiguous()  # (B, out, H, W); NCHW (see if_blocks.sampling_layout)

    def _checkpointing(self) -> bool:
        return self.gradient_checkpointing and self.training and torch.is_grad_enabled()

    def _call(self, block: nn.Module, *args):
        if self._checkpointing():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)


def _up_from_tensors(block: nn.Module, emb: Tensor, ctx: Tensor, size, h: Tensor, *skips: Tensor) -> Tensor:
    return block(h, list(skips), emb, ctx, size)  # a fresh list per call: recomputation pops it again


def _per_sample(t: Tensor | float, B: int, device: torch.device) -> Tensor:
    """A scalar, 0-d or (B,) time/level as a (B,) tensor on `device`."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"expected a scalar or a ({B},) tensor of times, got shape {tuple(t.shape)}")
    return t
