"""Building blocks of our U-Nets: time embedding, FiLM ResBlock, text-aware attention, text pooling,
down/upsampling.

Images are (B, C, H, W); the conditioning embedding `emb` is (B, E) and already passed through SiLU
by the caller (once per forward, not once per block); text tokens are (B, L, D) with a bool mask
(B, L) where True means "attend". Every block is per-sample: nothing mixes the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias so that the residual branch it ends starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ------------------------------------------------------------------------------------------------
# time


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of model times (B,) -> (B, dim), always float32.

    Transformer positional encoding (Vaswani et al. 2017) as used by DDPM (Ho et al. 2020): half
    cosines, half sines over geometric frequencies. Kept in fp32 even under autocast because t reaches
    1000 and bf16 (8 mantissa bits) would scramble the phase of the high frequencies.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )  # (half,)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeMLP(nn.Module):
    """Sinusoidal features -> (B, emb_dim) embedding through a 2-layer SiLU MLP."""

    def __init__(self, sin_dim: int, emb_dim: int):
        super().__init__()
        self.sin_dim = sin_dim
        self.fc1 = nn.Linear(sin_dim, emb_dim)
        self.fc2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, t: Tensor) -> Tensor:
        # The features are computed in fp32 and cast to the weights' dtype (fp16/bf16 weights: --precision).
        return self.fc2(F.silu(self.fc1(timestep_embedding(t, self.sin_dim).to(self.fc1.weight.dtype))))


# ------------------------------------------------------------------------------------------------
# residual block


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with FiLM (scale, shift) from the embedding between them.

    FiLM after the second norm as in Dhariwal & Nichol 2021 ("AdaGN") and Imagen; that norm has no
    affine of its own since the FiLM scale/shift already provides one. The second conv is zero-init,
    so a fresh block is the identity (or its 1x1 skip projection).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, affine=False)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Co, H, W)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, Co, 1, 1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), 1 + scale))
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


# ------------------------------------------------------------------------------------------------
# attention


def _heads(x: Tensor, n: int, heads: int) -> Tensor:
    """(B, S, n*heads*d) -> (n, B, heads, S, d): split a fused projection into per-head q/k/v."""
    B, S, _ = x.shape
    return x.view(B, S, n, heads, -1).permute(2, 0, 3, 1, 4)


class Attention(nn.Module):
    """Pixels attend to text tokens, and (when `self_attn`) to all pixels too, in ONE softmax.

    With `self_attn` the keys are [pixels ; text] as in Imagen's base U-Net and DeepFloyd IF, which
    is self- plus cross-attention for the price of one attention call. Without it the keys are the
    text tokens only (the cross-attention of Imagen's SR U-Nets). Uses SDPA, so flash / fused kernels
    apply on CPU and GPU. The caller guarantees at least one valid text token per row (the U-Net
    prepends a learned null token), so a fully padded prompt never turns a softmax row into NaN.
    """

    def __init__(self, channels: int, cond_dim: int, head_dim: int, groups: int, self_attn: bool):
        super().__init__()
        self.heads = channels // head_dim
        self.self_attn = self_attn
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, (3 if self_attn else 1) * channels)  # q (and k, v of pixels)
        self.to_kv_text = nn.Linear(cond_dim, 2 * channels)
        self.to_out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        k_txt, v_txt = _heads(self.to_kv_text(text), 2, self.heads)  # 2 x (B, h, L, d)
        mask = text_mask
        if self.self_attn:
            q, k, v = _heads(self.to_q(tokens), 3, self.heads)  # 3 x (B, h, HW, d)
            k = torch.cat([k, k_txt.to(k.dtype)], dim=2)  # (B, h, HW+L, d)
            v = torch.cat([v, v_txt.to(v.dtype)], dim=2)
            if mask is not None:
                mask = torch.cat([mask.new_ones(B, H * W), mask], dim=1)  # (B, HW+L)
        else:
            q = _heads(self.to_q(tokens), 1, self.heads)[0]  # (B, h, HW, d)
            k, v = k_txt.to(q.dtype), v_txt.to(q.dtype)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, S) broadcast
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, HW, d)
        out = self.to_out(out.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class TextTransformer(nn.Module):
    """A few pre-LayerNorm transformer layers over the projected text tokens, trained with the U-Net.

    The text encoder is frozen; these layers let the U-Net re-mix its token states into what it needs
    (GLIDE trains its whole text transformer; Imagen none). The motivation was binding in "a red circle
    below a blue square": self-attention over the tokens can tie each colour to its side of the relation
    word. It did not help, so no shipped recipe uses it (docs/decisions.md#text-layers). The output
    projections start at zero, so a fresh stack is the identity. Padding is masked as keys; the U-Net's
    null token (always valid) keeps every softmax row finite.
    """

    def __init__(self, dim: int, head_dim: int, layers: int, mlp_mult: int = 4):
        super().__init__()
        self.heads = dim // head_dim
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "to_qkv": nn.Linear(dim, 3 * dim), "to_out": zero_init(nn.Linear(dim, dim)),
                "norm2": nn.LayerNorm(dim), "mlp": nn.Sequential(nn.Linear(dim, mlp_mult * dim), nn.GELU(),
                                                                  zero_init(nn.Linear(mlp_mult * dim, dim))),
            }))

    def forward(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        B, L, D = tokens.shape
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        x = tokens
        for layer in self.layers:
            q, k, v = _heads(layer["to_qkv"](layer["norm1"](x)), 3, self.heads)  # 3 x (B, h, L, d)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            x = x + layer["to_out"](a.transpose(1, 2).reshape(B, L, D))
            x = x + layer["mlp"](layer["norm2"](x))
        return x


class AttentionPool(nn.Module):
    """Pool text tokens (B, L, D) into one vector (B, out_dim), respecting the mask.

    The masked mean of the tokens is the query of one multi-head attention over the tokens (the
    attention pooling of CLIP's ResNet head, used by Imagen and DeepFloyd IF to add a summary of the
    prompt to the time embedding).
    """

    def __init__(self, dim: int, head_dim: int, out_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, out_dim)

    def forward(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        B, L, D = tokens.shape
        x = self.norm(tokens)
        if mask is None:
            mean = x.mean(dim=1, keepdim=True)  # (B, 1, D)
        else:
            m = mask[:, :, None].to(x.dtype)  # (B, L, 1)
            mean = (x * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
        q = _heads(self.to_q(mean), 1, self.heads)[0]  # (B, h, 1, d)
        k, v = _heads(self.to_kv(x), 2, self.heads)  # 2 x (B, h, L, d)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask)
        return self.to_out(out.reshape(B, D))  # (B, out_dim); (B, h, 1, d) flattens head-major


# ------------------------------------------------------------------------------------------------
# resampling


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (Imagen's DBlock), optionally changing channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, Co, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour resize then a 3x3 conv (no checkerboard, unlike a
    transposed conv), optionally changing channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, Co, 2H, 2W)
