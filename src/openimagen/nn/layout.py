"""Text layout: a coarse spatial map of what the prompt puts where, read from the text tokens.

The U-Net's own attention has no notion of place: a pixel's query carries only what its features
encode about location (zero padding, coordinate channels), so binding "a red circle above a blue
square" -- red goes up, blue goes down, not the other way round -- must be discovered through features
that barely know "up": on the shapes world our base U-Nets drew both objects on the right axis but on
a coin-toss side (docs/decisions.md#text-layout). Here every cell of a G x G grid owns a learned query,
so "which colour goes in this cell" is one cross-attention away from the tokens; a few decoder layers
(cells attend to each other, then to the text) resolve which object of the sentence each cell shows.
It learns that binding only after a plateau, so the shipped recipe trains it alone first
(docs/decisions.md#text-layout-plateau).

The map (B, D, G, G) is added to the U-Net's features (upsampled, through zero-initialised 1x1
convs). `image(features)` turns it into a G x G RGB guess of the clean image: the training loop fits
that guess to the downsampled image (`layout_loss`), a direct signal for the layout at every step
rather than only through the few high-noise steps where the caption is all the U-Net has.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import _heads, zero_init


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid * grid, dim) fixed sin-cos code of the cells of a grid, row-major: the first half of the
    channels encodes the row, the second the column, each over geometric frequencies (Vaswani et al.)."""
    if dim % 4:
        raise ValueError(f"the text layout's width {dim} must be divisible by 4 (sin and cos of rows and columns)")
    q = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)  # (q,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    parts = []
    for c in (rows.flatten(), cols.flatten()):
        angle = c[:, None] * freqs[None]  # (G*G, q)
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1)  # (G*G, dim)


class _DecoderLayer(nn.Module):
    """Pre-LayerNorm: cells attend to cells, then to the text tokens, then an MLP."""

    def __init__(self, dim: int, head_dim: int, mlp_mult: int = 4):
        super().__init__()
        self.heads = dim // head_dim
        self.norm_self, self.to_qkv, self.out_self = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm_cross, self.to_q, self.out_cross = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_text, self.to_kv = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_mult * dim), nn.GELU(), nn.Linear(mlp_mult * dim, dim))

    def forward(self, x: Tensor, text: Tensor, attn_mask: Tensor | None) -> Tensor:
        B, N, D = x.shape
        q, k, v = _heads(self.to_qkv(self.norm_self(x)), 3, self.heads)  # 3 x (B, h, N, d)
        x = x + self.out_self(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        q = _heads(self.to_q(self.norm_cross(x)), 1, self.heads)[0]  # (B, h, N, d)
        k, v = _heads(self.to_kv(self.norm_text(text)), 2, self.heads)  # 2 x (B, h, L, d)
        a = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask)
        x = x + self.out_cross(a.transpose(1, 2).reshape(B, N, D))
        return x + self.mlp(self.norm_mlp(x))


class TextLayout(nn.Module):
    """Text tokens (B, L, D) -> layout map (B, D, G, G); `image` maps it to a (B, C, G, G) picture."""

    def __init__(self, dim: int, head_dim: int, grid: int, layers: int, image_channels: int):
        super().__init__()
        self.grid = grid
        # One query per cell (row-major), starting from a 2-D sin-cos code of the cell's place: "the top
        # half" is then a direction in query space from step one (docs/decisions.md#text-layout-plateau).
        self.queries = nn.Parameter(sincos_2d(grid, dim))
        self.layers = nn.ModuleList(_DecoderLayer(dim, head_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.to_image = nn.Linear(dim, image_channels)

    def forward(self, text: Tensor, mask: Tensor | None) -> Tensor:
        B, G = text.shape[0], self.grid
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        x = self.queries.to(text.dtype).expand(B, -1, -1)  # (B, G*G, D)
        for layer in self.layers:
            x = layer(x, text, attn_mask)
        return self.norm(x).transpose(1, 2).reshape(B, -1, G, G)  # (B, D, G, G)

    def image(self, layout: Tensor) -> Tensor:
        """The layout's guess of the clean image at G x G: (B, D, G, G) -> (B, C, G, G)."""
        return self.to_image(layout.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayoutInjection(nn.Module):
    """Adds the layout map to features of any resolution: nearest upsample (or area downsample), 1x1 conv.

    Zero-initialised, so a U-Net with a fresh layout computes exactly what it computed without one.
    """

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.proj = zero_init(nn.Conv2d(dim, channels, 1))

    def forward(self, h: Tensor, layout: Tensor) -> Tensor:
        size = h.shape[-2:]
        if layout.shape[-2:] != size:
            bigger = size[0] >= layout.shape[-2]
            layout = F.interpolate(layout, size=size, mode="nearest" if bigger else "area")
        return h + self.proj(layout.to(h.dtype))
