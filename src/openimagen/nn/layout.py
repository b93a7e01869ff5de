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

It is an extra of the efficient U-Net (nn/extras.py: `EfficientUNetConfig.extras=(TextLayoutConfig(grid=8),)`,
JSON `{"kind": "layout", "grid": 8, "layers": 2}`). Its map (B, D, G, G) is added to the U-Net's features;
`image(map)` turns it into a G x G RGB guess of the clean image, and its auxiliary loss fits that guess to
the image averaged over the cells: a direct signal for the layout at every step rather than only through
the few high-noise steps where the caption is all the U-Net has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import _heads


@dataclass(frozen=True)
class TextLayoutConfig:
    kind: ClassVar[str] = "layout"  # the JSON tag of an entry of EfficientUNetConfig.extras
    grid: int = 8  # G: the map has G x G cells
    layers: int = 2  # decoder layers over the cells

    def __post_init__(self):
        for name in ("grid", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"the text layout's {name}={value!r} must be an int >= 1")

    def check(self, unet) -> None:
        """Raise ValueError unless the layout fits `unet` (an EfficientUNetConfig): it works at the text width."""
        unet.check_heads(unet.cond_width, "the text layout (cond_dim)")
        if unet.cond_width % 4:
            raise ValueError(f"the text layout needs cond_dim divisible by 4 (its cells' sin-cos code); "
                             f"got {unet.cond_width}")

    def build(self, unet) -> "TextLayout":
        width = unet.cond_width
        return TextLayout(width, unet.head_dim(width), self.grid, self.layers, unet.in_channels)


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
    """Text tokens (B, L, D) -> layout map (B, D, G, G); `image` maps it to a (B, C, G, G) picture.

    As a U-Net extra (nn/extras.py) it remembers its last map, and `aux_loss(x0)` fits that map's image
    guess to x0."""

    def __init__(self, dim: int, head_dim: int, grid: int, layers: int, image_channels: int):
        super().__init__()
        self.grid, self.width = grid, dim
        # One query per cell (row-major), starting from a 2-D sin-cos code of the cell's place: "the top
        # half" is then a direction in query space from step one (docs/decisions.md#text-layout-plateau).
        self.queries = nn.Parameter(sincos_2d(grid, dim))
        self.layers = nn.ModuleList(_DecoderLayer(dim, head_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.to_image = nn.Linear(dim, image_channels)
        self._seen: Tensor | None = None  # the last map, for aux_loss

    def forward(self, text: Tensor, mask: Tensor | None) -> Tensor:
        B, G = text.shape[0], self.grid
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        x = self.queries.to(text.dtype).expand(B, -1, -1)  # (B, G*G, D)
        for layer in self.layers:
            x = layer(x, text, attn_mask)
        self._seen = self.norm(x).transpose(1, 2).reshape(B, -1, G, G)  # (B, D, G, G)
        return self._seen

    def image(self, layout: Tensor) -> Tensor:
        """The layout's guess of the clean image at G x G: (B, D, G, G) -> (B, C, G, G)."""
        return self.to_image(layout.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def aux_loss(self, x0: Tensor) -> Tensor:
        """MSE of the last map's image guess against x0 (B, C, H, W) averaged over the G x G cells."""
        if self._seen is None:
            raise RuntimeError("the text layout has no map to score: run the U-Net (or forward_extras) first")
        guess, self._seen = self.image(self._seen), None  # consumed: the next step scores its own map
        return F.mse_loss(guess.float(), F.adaptive_avg_pool2d(x0, guess.shape[-2:]))
