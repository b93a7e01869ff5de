"""Spelling: a spatial map of which letter goes where, read from the letter tokens of spelling.py.

A U-Net extra (nn/extras.py: `EfficientUNetConfig.extras=(SpellingConfig(max_chars=8),)`, JSON
`{"kind": "spelling", "max_chars": 8, "grid": 16, "width": 64, "layers": 2}`). Unlike the text layout
it does not read the U-Net's text tokens: the first `max_chars` tokens of `text_embeds` are the
one-hot letters of the prompt's quoted word (spelling.SpelledEncoder), and the U-Net splits them off
(`WithExtras.split_letters`) so its own text path sees exactly the base encoder's tokens.

    letters (B, K, D) --first 27 channels--> Linear + position (K, W) --> [null ; letters] (B, 1+K, W)
    cells (G*G, W) from a 2-D sin-cos code --decoder layers: attend to cells, then to letters--> map (B, W, G, G)

The null token is always attendable, so a prompt with no word (or the empty prompt of classifier-free
guidance) gives finite attention and one fixed map; masked letter slots are never attended, so the
padding is invisible. The U-Net adds the map through zero-initialised convs (MapInjection), so a fresh
extra changes nothing the U-Net computes. Why letters as tokens of a U-Net extra:
docs/decisions.md#character-encoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .layout import _DecoderLayer, sincos_2d

CODE_WIDTH = 27   # spelling.CODE_WIDTH: channel 0 unused, then A..Z (kept here too: nn/ imports no text code)


@dataclass(frozen=True)
class SpellingConfig:
    kind: ClassVar[str] = "spelling"  # the JSON tag of an entry of EfficientUNetConfig.extras
    reads: ClassVar[str] = "letters"  # what the extra is called with (extras.py): the letter tokens
    max_chars: int = 8  # K: must equal the SpelledEncoderConfig's max_chars
    grid: int = 16  # G: the map has G x G cells
    width: int = 64  # W: channels of the cells and of the map
    layers: int = 2  # decoder layers over the cells
    head_dim: int = 32

    def __post_init__(self):
        for name in ("max_chars", "grid", "width", "layers", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"the spelling extra's {name}={value!r} must be an int >= 1")
        if self.width % 4 or self.width % self.head_dim:
            raise ValueError(f"the spelling extra's width={self.width} must be divisible by 4 (its cells' sin-cos "
                             f"code) and by head_dim={self.head_dim}")

    def check(self, unet) -> None:
        """Raise ValueError unless the letter code fits in `unet`'s text embeddings (an EfficientUNetConfig)."""
        if unet.text_embed_dim < CODE_WIDTH:
            raise ValueError(f"the spelling extra needs text_embed_dim >= {CODE_WIDTH}, got {unet.text_embed_dim}")

    def build(self, unet) -> "Spelling":
        return Spelling(self)


class Spelling(nn.Module):
    """Letter tokens (B, K, D) and their mask (B, K) -> map (B, W, G, G)."""

    def __init__(self, cfg: SpellingConfig):
        super().__init__()
        self.cfg, self.width, self.grid = cfg, cfg.width, cfg.grid
        self.embed = nn.Linear(CODE_WIDTH, cfg.width)
        self.position = nn.Parameter(torch.randn(cfg.max_chars, cfg.width) * 0.02)  # letter k of the word
        self.null = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)
        self.queries = nn.Parameter(sincos_2d(cfg.grid, cfg.width))
        self.layers = nn.ModuleList(_DecoderLayer(cfg.width, cfg.head_dim) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, letters: Tensor, mask: Tensor | None) -> Tensor:
        B, K, _ = letters.shape
        tokens = self.embed(letters[..., :CODE_WIDTH]) + self.position[:K].to(letters.dtype)  # (B, K, W)
        dtype = tokens.dtype
        tokens = torch.cat([self.null.to(dtype).expand(B, 1, -1), tokens], dim=1)  # (B, 1+K, W)
        keep = torch.ones(B, K, dtype=torch.bool, device=letters.device) if mask is None else mask.bool()
        attn_mask = torch.cat([keep.new_ones(B, 1), keep], dim=1)[:, None, None, :]  # (B, 1, 1, 1+K)
        x = self.queries.to(dtype).expand(B, -1, -1)  # (B, G*G, W)
        for layer in self.layers:
            x = layer(x, tokens, attn_mask)
        G = self.grid
        return self.norm(x).transpose(1, 2).reshape(B, -1, G, G)  # (B, W, G, G)

    def aux_loss(self, x0: Tensor) -> None:
        return None  # learned only through the diffusion loss
