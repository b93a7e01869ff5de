"""Imagen's text-conditioned U-Net, including the memory-efficient layout of its SR stages.

Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding": the "Neural network architecture" section and the appendix on the Efficient U-Net. The network returns raw output;
it knows nothing about noise schedules or what its output means (eps, v, x0, learned variance).

Conditioning, computed once per forward:
  emb  = MLP(sin(t)) [+ MLP(sin(noise_level))] [+ AttentionPool(text)]       (B, E)
  text = [null ; LayerNorm(Linear(text_embeds))]                            (B, 1+L, Dc)
  text = TextTransformer(text)   (only when text_layers > 0)               (B, 1+L, Dc)
The learned null token is always attendable, so a prompt whose mask is all False (e.g. the empty
prompt of classifier-free guidance) still yields finite attention.

Layout per level i (channels dim * dim_mults[i]):
  standard          : blocks at H/2^i, then downsample (except the last level)
  memory_efficient  : downsample first (except the last level), then blocks -- so no block runs at
                      full resolution, where activations are largest (Imagen's Efficient U-Net).
Each level's attention (if any) follows its last ResBlock; the up path mirrors the down path with
skip connections (scaled by 2^-0.5 when `scale_skip`), and a final ResBlock sees the init conv's
full-resolution features again.

Extras (nn/extras.py, `extras`; e.g. the text layout of nn/layout.py) read the text tokens and add a
spatial map after the input conv and before the middle block; the forward still returns one tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .extras import LEGACY_KEYS, ExtraConfig, WithExtras, check_extras, upgrade_legacy_layout
from .layers import Attention, AttentionPool, Downsample, ResBlock, TextTransformer, TimeMLP, Upsample, zero_init


@dataclass(frozen=True)
class EfficientUNetConfig:
    kind: ClassVar[str] = "efficient"  # the JSON tag of a StageConfig.unet (config.py)
    in_channels: int = 3
    out_channels: int = 3  # 2 * in_channels for a learned-variance parameterization
    dim: int = 128  # base width; level i has dim * dim_mults[i] channels
    dim_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int | tuple[int, ...] = 2  # one int for every level, or one per level
    attn_levels: tuple[bool, ...] = (False, True, True, True)  # pixels attend to [pixels ; text]
    cross_attn_levels: tuple[bool, ...] | None = None  # text-only attention; None = no level
    attn_head_dim: int = 64
    attn_heads: int | None = None  # if set, overrides attn_head_dim (head_dim = channels / heads)
    text_embed_dim: int = 384  # width of the text encoder's token embeddings
    cond_dim: int | None = None  # width of text tokens inside the U-Net; None = dim
    time_embed_dim: int | None = None  # E; None = 4 * dim
    lowres_cond: bool = False  # SR stage: concat the upsampled low-res image, embed its noise level
    attn_pool_text: bool = True  # add attention-pooled text to the time embedding (Imagen, IF)
    text_layers: int = 0  # trainable transformer layers over the text tokens (layers.TextTransformer)
    num_groups: int = 32  # GroupNorm groups
    dropout: float = 0.0
    memory_efficient: bool = False  # downsample before the blocks of each level (Efficient U-Net)
    scale_skip: bool = True  # multiply skip connections by 2^-0.5
    # Concatenate x/y coordinates in [-1, 1] to the input (CoordConv, Liu et al. 2018). Attention and
    # FiLM carry no location, so "on the left" / "above" must otherwise be inferred from zero padding.
    coord_channels: bool = False  # off in every preset: docs/decisions.md#coord-channels
    # Modules that add a map read from the text (nn/extras.py), e.g. (TextLayoutConfig(grid=8),): the text
    # layout that binds attributes to places ("a red circle above a blue square"). JSON: kind-tagged.
    extras: tuple[ExtraConfig, ...] = ()
    LEGACY: ClassVar[dict[str, str]] = LEGACY_KEYS  # retired keys -> what to write instead (config.py)

    @classmethod
    def upgrade_json(cls, data: dict) -> dict:
        return upgrade_legacy_layout(data)  # the text layout's fields before it became an extra

    def __post_init__(self):
        for name in ("dim_mults", "num_res_blocks", "attn_levels", "cross_attn_levels", "extras"):
            if isinstance(getattr(self, name), list):  # keep the config hashable and == its JSON round trip
                object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.dim_mults)
        if n < 1 or any(not isinstance(m, int) or m < 1 for m in self.dim_mults):
            raise ValueError(f"dim_mults={self.dim_mults!r}: need a non-empty tuple of positive ints")
        for name in ("num_res_blocks", "attn_levels", "cross_attn_levels"):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) and len(value) != n:
                raise ValueError(
                    f"{name}={value!r} has {len(value)} entries but dim_mults={self.dim_mults!r} has {n} "
                    f"levels; give one entry per level"
                )
        if any(b < 1 for b in self.blocks_per_level):
            raise ValueError(f"num_res_blocks={self.num_res_blocks!r}: every level needs >= 1 block")
        if self.dim % 2:
            raise ValueError(f"dim={self.dim} must be even (it is also the sinusoidal embedding width)")
        for i, ch in enumerate(self.channels):
            if ch % self.num_groups:
                raise ValueError(
                    f"level {i} has {ch} channels (dim={self.dim} * {self.dim_mults[i]}), not divisible "
                    f"by num_groups={self.num_groups}; change dim or num_groups"
                )
            if self.attn_levels[i] or self.cross_attention[i]:
                self.check_heads(ch, f"level {i}")
        if self.attn_pool_text or self.text_layers:
            self.check_heads(self.cond_width, "the text pooling / text layers (cond_dim)")
        check_extras(self.extras, self)
        if not isinstance(self.text_layers, int) or self.text_layers < 0:
            raise ValueError(f"text_layers={self.text_layers!r} must be an int >= 0")
        for name in ("in_channels", "out_channels", "text_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")

    def check_heads(self, ch: int, where: str) -> None:
        head_dim = self.head_dim(ch)
        if head_dim < 1 or ch % head_dim or (self.attn_heads and ch % self.attn_heads):
            raise ValueError(
                f"{where} has {ch} channels, which do not split into attention heads "
                f"(attn_heads={self.attn_heads}, attn_head_dim={self.attn_head_dim}); pick a head size "
                f"that divides every attended width"
            )

    # derived values, so the rest of the code never re-derives defaults
    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.dim * m for m in self.dim_mults)

    @property
    def blocks_per_level(self) -> tuple[int, ...]:
        b = self.num_res_blocks
        return tuple(b) if isinstance(b, (tuple, list)) else (b,) * len(self.dim_mults)

    @property
    def cross_attention(self) -> tuple[bool, ...]:
        c = self.cross_attn_levels
        return tuple(c) if c is not None else (False,) * len(self.dim_mults)

    @property
    def cond_width(self) -> int:
        return self.cond_dim or self.dim

    @property
    def emb_width(self) -> int:
        return self.time_embed_dim or 4 * self.dim

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mults) - 1)

    def head_dim(self, channels: int) -> int:
        return channels // self.attn_heads if self.attn_heads else self.attn_head_dim


UNetConfig = EfficientUNetConfig  # its name before the IF U-Net joined it


class _Level(nn.Module):
    """One resolution of the down or up path: optional resample, ResBlocks, optional attention."""

    def __init__(self, blocks: list[ResBlock], attn: Attention | None, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.resample = resample


class EfficientUNet(WithExtras, nn.Module):
    def __init__(self, cfg: EfficientUNetConfig):
        super().__init__()
        self.cfg = cfg
        E, Dc, G = cfg.emb_width, cfg.cond_width, cfg.num_groups
        n = len(cfg.dim_mults)
        chans, pre = cfg.channels, cfg.memory_efficient

        def attention(i: int) -> Attention | None:
            if not (cfg.attn_levels[i] or cfg.cross_attention[i]):
                return None
            return Attention(chans[i], Dc, cfg.head_dim(chans[i]), G, self_attn=cfg.attn_levels[i])

        # conditioning
        self.time_mlp = TimeMLP(cfg.dim, E)
        self.lowres_time_mlp = TimeMLP(cfg.dim, E) if cfg.lowres_cond else None
        self.text_proj = nn.Linear(cfg.text_embed_dim, Dc)
        self.text_norm = nn.LayerNorm(Dc)
        self.null_text = nn.Parameter(torch.randn(1, 1, Dc) * 0.02)
        self.text_layers = TextTransformer(Dc, cfg.head_dim(Dc), cfg.text_layers) if cfg.text_layers else None
        self.text_pool = AttentionPool(Dc, cfg.head_dim(Dc), E) if cfg.attn_pool_text else None

        self.add_extras(cfg, chans[-1])  # nn/extras.py; built here, after the text path: the weights' order

        in_ch = cfg.in_channels * (2 if cfg.lowres_cond else 1) + (2 if cfg.coord_channels else 0)
        self.init_conv = nn.Conv2d(in_ch, cfg.dim, 3, padding=1)

        # down path; skip_chans records the channels of every skip, consumed in reverse by the up path
        ch, skip_chans, self.down = cfg.dim, [], nn.ModuleList()
        for i in range(n):
            last = i == n - 1
            resample = None
            if pre and not last:
                resample, ch = Downsample(ch, chans[i]), chans[i]
            blocks = []
            for _ in range(cfg.blocks_per_level[i]):
                blocks.append(ResBlock(ch, chans[i], E, G, cfg.dropout))
                ch = chans[i]
                skip_chans.append(ch)
            if not pre and not last:
                resample = Downsample(ch, ch)
            self.down.append(_Level(blocks, attention(i), resample))

        # middle, at the lowest resolution; attends like the last level
        self.mid1 = ResBlock(ch, ch, E, G, cfg.dropout)
        self.mid_attn = attention(n - 1)
        self.mid2 = ResBlock(ch, ch, E, G, cfg.dropout)

        # up path, levels in reverse; upsampling switches to the channels of the level it enters
        self.up = nn.ModuleList()
        for i in reversed(range(n)):
            last = i == n - 1
            resample = None
            if not pre and not last:
                resample, ch = Upsample(ch, chans[i]), chans[i]
            blocks = []
            for _ in range(cfg.blocks_per_level[i]):
                blocks.append(ResBlock(ch + skip_chans.pop(), chans[i], E, G, cfg.dropout))
                ch = chans[i]
            if pre and not last:
                to = chans[i - 1] if i > 0 else cfg.dim
                resample, ch = Upsample(ch, to), to
            self.up.append(_Level(blocks, attention(i), resample))
        assert not skip_chans and ch == (cfg.dim if pre else chans[0])

        # output: one more block that also sees the init conv's full-resolution features
        self.final_block = ResBlock(ch + cfg.dim, cfg.dim, E, G, cfg.dropout)
        self.out_norm = nn.GroupNorm(G, cfg.dim)
        self.out_conv = zero_init(nn.Conv2d(cfg.dim, cfg.out_channels, 3, padding=1))

    def _text(self, text_embeds: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Encoder tokens -> the U-Net's tokens [null ; LayerNorm(Linear(.))] (B, 1+L, Dc) and their mask."""
        B = text_embeds.shape[0]
        text = self.text_norm(self.text_proj(text_embeds))  # (B, L, Dc)
        text = torch.cat([self.null_text.expand(B, 1, -1).to(text.dtype), text], dim=1)  # (B, 1+L, Dc)
        mask = None
        if text_mask is not None and not bool(text_mask.all()):
            mask = torch.cat([text_mask.new_ones(B, 1), text_mask], dim=1).bool()  # (B, 1+L)
        if self.text_layers is not None:
            text = self.text_layers(text, mask)
        return text, mask

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, x, t, text_embeds, text_mask, lowres, noise_level) -> None:
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {cfg.in_channels}, H, W)")
        B, _, H, W = x.shape
        f = cfg.downsample_factor
        if H % f or W % f:
            raise ValueError(
                f"image size {H}x{W} is not divisible by {f} (2^(levels-1) for {len(cfg.dim_mults)} "
                f"levels); resize or pad the image to a multiple of {f}"
            )
        if t.shape != (B,):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected ({B},), one time per image")
        if text_embeds.ndim != 3 or text_embeds.shape[0] != B or text_embeds.shape[2] != cfg.text_embed_dim:
            raise ValueError(
                f"text_embeds has shape {tuple(text_embeds.shape)}; expected ({B}, L, {cfg.text_embed_dim}) "
                f"-- use a text encoder of width {cfg.text_embed_dim} or set EfficientUNetConfig.text_embed_dim"
            )
        if text_mask is not None and text_mask.shape != text_embeds.shape[:2]:
            raise ValueError(
                f"text_mask has shape {tuple(text_mask.shape)}; expected {tuple(text_embeds.shape[:2])}"
            )
        if cfg.lowres_cond:
            if lowres is None:
                raise ValueError("this is a super-resolution U-Net (lowres_cond=True): pass lowres=, the "
                                 "low-res image upsampled to x's size")
            if lowres.shape != x.shape:
                raise ValueError(f"lowres has shape {tuple(lowres.shape)}; expected {tuple(x.shape)} "
                                 f"(upsample it to x's size first)")
            if noise_level is not None and noise_level.shape != (B,):
                raise ValueError(f"noise_level has shape {tuple(noise_level.shape)}; expected ({B},)")
        elif lowres is not None or noise_level is not None:
            raise ValueError("this U-Net has lowres_cond=False and takes no lowres/noise_level; "
                             "build it with lowres_cond=True for a super-resolution stage")

    def forward(
        self,
        x: Tensor,  # (B, C, H, W) noisy image x_t
        t: Tensor,  # (B,) model time
        text_embeds: Tensor,  # (B, L, text_embed_dim)
        text_mask: Tensor | None = None,  # (B, L) bool, True = real token; None = all real
        lowres: Tensor | None = None,  # (B, C, H, W) noise-augmented low-res image (SR stages)
        noise_level: Tensor | None = None,  # (B,) its noise-augmentation level (model time); None = 0
    ) -> Tensor:
        self._check_inputs(x, t, text_embeds, text_mask, lowres, noise_level)
        cfg = self.cfg

        # conditioning
        emb = self.time_mlp(t)  # (B, E)
        if cfg.lowres_cond:
            noise_level = torch.zeros_like(t) if noise_level is None else noise_level
            emb = emb + self.lowres_time_mlp(noise_level)
            x = torch.cat([x, lowres.to(x.dtype)], dim=1)  # (B, 2C, H, W)
        letters, letter_mask, text_embeds, text_mask = self.split_letters(text_embeds, text_mask)  # extras.py
        text, mask = self._text(text_embeds, text_mask)
        if self.text_pool is not None:
            emb = emb + self.text_pool(text, mask)
        emb = F.silu(emb)  # every FiLM projection starts with SiLU; do it once
        extras = self.extra_maps(text, mask, letters, letter_mask)  # each extra's map (B, D, G, G), injections

        # Plain NCHW on purpose (channels_last is slower on CPU): docs/decisions.md#nchw
        if cfg.coord_channels:
            x = torch.cat([x, _coordinates(x)], dim=1)  # (B, C + 2, H, W)
        h = self.init_conv(x)  # (B, dim, H, W)
        for extra_map, into_input, _ in extras:
            h = into_input(h, extra_map)
        h0, skips = h, []
        for level in self.down:
            if cfg.memory_efficient and level.resample is not None:
                h = level.resample(h)
            for j, block in enumerate(level.blocks):
                h = block(h, emb)
                if level.attn is not None and j == len(level.blocks) - 1:
                    h = level.attn(h, text, mask)
                skips.append(h)
            if not cfg.memory_efficient and level.resample is not None:
                h = level.resample(h)

        for extra_map, _, into_middle in extras:
            h = into_middle(h, extra_map)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h, text, mask)
        h = self.mid2(h, emb)

        s = 2**-0.5 if cfg.scale_skip else 1.0
        for level in self.up:
            if not cfg.memory_efficient and level.resample is not None:
                h = level.resample(h)
            for j, block in enumerate(level.blocks):
                h = block(torch.cat([h, skips.pop() * s], dim=1), emb)
                if level.attn is not None and j == len(level.blocks) - 1:
                    h = level.attn(h, text, mask)
            if cfg.memory_efficient and level.resample is not None:
                h = level.resample(h)

        h = self.final_block(torch.cat([h, h0 * s], dim=1), emb)  # (B, dim, H, W)
        return self.out_conv(F.silu(self.out_norm(h)))  # (B, out_channels, H, W)


# ------------------------------------------------------------------------------------------------
# presets: named factories; keyword arguments override any field, e.g. PRESETS["base64"](text_embed_dim=384)


def _coordinates(x: Tensor) -> Tensor:
    """(B, 2, H, W): x then y pixel-centre coordinates in [-1, 1]."""
    B, _, H, W = x.shape
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=x.device, dtype=x.dtype)
    grid = torch.stack([xs.view(1, W).expand(H, W), ys.view(H, 1).expand(H, W)])  # (2, H, W)
    return grid.expand(B, 2, H, W)


def _preset(**defaults) -> Callable[..., EfficientUNetConfig]:
    def factory(**overrides) -> EfficientUNetConfig:
        return EfficientUNetConfig(**{**defaults, **overrides})

    return factory


PRESETS: dict[str, Callable[..., EfficientUNetConfig]] = {
    # for tests: ~0.1M parameters, two levels
    "tiny": _preset(dim=16, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(False, True),
                    attn_head_dim=8, num_groups=8, text_embed_dim=32, time_embed_dim=32),
    # the paper's 64x64 base U-Net shape, at the T5-XXL text width
    "base64": _preset(dim=512, dim_mults=(1, 2, 3, 4), num_res_blocks=3,
                      attn_levels=(False, True, True, True), text_embed_dim=4096),
    # Imagen's Efficient U-Net for 64 -> 256: attention only at the lowest resolution
    "sr256": _preset(dim=128, dim_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 8),
                     attn_levels=(False, False, False, True), memory_efficient=True, lowres_cond=True,
                     text_embed_dim=4096),
    # 256 -> 1024: no self-attention, text cross-attention at the lowest resolution
    "sr1024": _preset(dim=128, dim_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 8),
                      attn_levels=(False, False, False, False), cross_attn_levels=(False, False, False, True),
                      memory_efficient=True, lowres_cond=True, text_embed_dim=4096),
    # CPU-trainable shapes-world cascade (32x32 base, then 32 -> 64) at the MiniLM text width.
    # Sizes are a first guess (~3M and ~2M parameters); tune here, nowhere else.
    "shapes-base": _preset(dim=48, dim_mults=(1, 2, 2), num_res_blocks=2, attn_levels=(False, True, True),
                           attn_head_dim=32, cond_dim=64, num_groups=16, text_embed_dim=384),
    "shapes-sr": _preset(dim=32, dim_mults=(1, 2, 3), num_res_blocks=(1, 2, 2),
                         attn_levels=(False, False, False), cross_attn_levels=(False, False, True),
                         attn_head_dim=32, num_groups=16, text_embed_dim=384, time_embed_dim=128,
                         memory_efficient=True, lowres_cond=True),
    # the third stage of the three-stage shapes cascade (64 -> 128): narrower, text only at the lowest level
    "shapes-sr128": _preset(dim=24, dim_mults=(1, 2, 4), num_res_blocks=(1, 1, 2),
                            attn_levels=(False, False, False), cross_attn_levels=(False, False, True),
                            attn_head_dim=32, cond_dim=32, num_groups=8, text_embed_dim=384, time_embed_dim=96,
                            memory_efficient=True, lowres_cond=True),
}
