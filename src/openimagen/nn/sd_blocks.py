"""Building blocks of Stable Diffusion's U-Net and VAE, named so diffusers' state-dict keys load unchanged.

Every attribute name is a key fragment of a diffusers `UNet2DConditionModel` / `AutoencoderKL` checkpoint
(`norm1`, `time_emb_proj`, `proj_in`, `transformer_blocks.0.attn2.to_k`, `ff.net.0.proj`, `downsamplers.0.conv`);
docs/reference stage3_and_editing.md §1.5-1.6 holds the math these reproduce. Latent diffusion (Rombach et
al. 2022): a residual conv U-Net whose middle levels carry transformer blocks that attend to the text.

- `ResnetBlock2D`: pre-norm residual block, the time embedding *added* after the first conv (no FiLM);
  without `temb` (the VAE) it is a plain residual block.
- `Transformer2D`: GroupNorm, a 1x1-conv or linear projection in, `BasicTransformerBlock`s (self- or
  cross-attention, cross-attention, GEGLU feed-forward; Shazeer 2020), projection out, residual.
- `SpatialSelfAttention`: the VAE's single-head attention over all positions, with its own GroupNorm.
Attention is `scaled_dot_product_attention` throughout (flash / memory-efficient kernels where available).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResnetBlock2D(nn.Module):
    """h = conv1(silu(norm1(x))) [+ time_emb_proj(silu(emb))]; h = conv2(silu(norm2(h))); out = shortcut(x) + h."""

    def __init__(self, cin: int, cout: int, temb: int | None, *, groups: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout) if temb is not None else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                       # (B, Cout, H, W)
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(nn.Module):
    """3x3 stride-2 conv (key `downsamplers.0.conv`). padding 0 is the VAE encoder's: zero-pad right and
    bottom by one first, so an even size halves exactly."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest x2 (or to `size`, so odd skip sizes line up), then a 3x3 conv (key `upsamplers.0.conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bf16 kernel on some backends
            x = x.float()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else \
            F.interpolate(x, size=size, mode="nearest")
        return self.conv(x.to(dtype))


# ----------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head attention; keys `to_q`, `to_k`, `to_v` (no bias in the U-Net), `to_out.0` (with bias)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        kv = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(kv, dim, bias=qkv_bias)
        self.to_v = nn.Linear(kv, dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:  # x (B, N, C), context (B, L, Ck)
        kv = x if context is None else context
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, N or L, d)
                   for t in (self.to_q(x), self.to_k(kv), self.to_v(kv)))
        a = F.scaled_dot_product_attention(q, k, v)                   # scale 1/sqrt(d)
        return self.to_out[0](a.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """proj -> (value, gate) halves; value * gelu(gate) (exact erf GELU). Key `ff.net.0.proj`."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1(x)) (self-attention, or cross-attention when only_cross); x += attn2(norm2(x), text);
    x += ff(norm3(x)). LayerNorms with eps 1e-5."""

    def __init__(self, dim: int, heads: int, context_dim: int, *, only_cross: bool, dropout: float = 0.0):
        super().__init__()
        self.only_cross = only_cross
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, context_dim if only_cross else None)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x), context if self.only_cross else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2D(nn.Module):
    """diffusers' `Transformer2DModel` on continuous input: norm, proj_in, blocks, proj_out, + residual.

    `linear=True` (`use_linear_projection`): the projections are Linear layers applied after flattening
    to tokens; otherwise 1x1 convs applied before flattening and after un-flattening.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, *, groups: int, linear: bool,
                 only_cross: bool, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        proj = (lambda: nn.Linear(channels, channels)) if linear else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(channels, heads, context_dim, only_cross=only_cross, dropout=dropout)
            for _ in range(layers)])
        self.proj_out = proj()

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)               # (B, HW, C) tokens
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()   # (B, C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class SpatialSelfAttention(nn.Module):
    """The VAE's mid-block attention: one head over all H*W positions, q/k/v with bias, its own GroupNorm,
    + residual (keys `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`; older files: query/key/value/proj_attn)."""

    def __init__(self, channels: int, *, groups: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)            # (B, HW, C)
        q, k, v = (p(t)[:, None] for p in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        # SDPA never builds the (HW x HW) score matrix on its fused kernels: 256^2 latents need that.
        a = F.scaled_dot_product_attention(q, k, v)[:, 0]            # (B, HW, C)
        return self.to_out[0](a).transpose(1, 2).reshape(B, C, H, W) + x
