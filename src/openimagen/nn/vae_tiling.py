"""Decode large latents in overlapping tiles, blended across the overlaps, so memory stays flat in image size.

The decoder's activations at full resolution (128 channels at 1024 x 1024 for the x4 upscaler's VAE) and
its middle attention over every latent position (65,536 at a 256 x 256 latent) are what run out of memory
(diffusers#1434). Here each tile of `tile` latent pixels is decoded alone and tiles overlap by `overlap`;
inside an overlap both tiles' pixels are averaged with weights that ramp linearly across it (a feathered
blend; a tile's outermost pixels, which saw zero padding, get none), so no seam steps from tile to tile. Each tile sees only its own context
(its GroupNorm statistics and attention), so the result is close to, not equal to, the untiled decode:
tests/nn/test_vae_tiling.py states the tolerance, away from and at the tile borders.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _starts(n: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, n): every `stride`, the last one flush with the end."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def _ramp(n: int, fade: int, rise: bool, fall: bool) -> Tensor:
    """(n,) weights: 1 in the middle, a linear cross-fade over `fade` samples on each side that has a neighbour.

    The outer quarter of the fade gets weight 0: a tile's own edge pixels saw zero padding where the
    whole image had content, so the neighbour (which has them in its interior) supplies them alone.
    Two facing ramps sum to 1 across the overlap, so a flat image stays flat.
    """
    w = torch.ones(n)
    margin = fade // 4
    ramp = ((torch.arange(fade, dtype=torch.float32) + 0.5 - margin) / (fade - 2 * margin)).clamp(0, 1)
    if rise:
        w[:fade] = ramp
    if fall:
        w[n - fade:] = torch.minimum(w[n - fade:], ramp.flip(0))
    return w


@torch.no_grad()
def decode_tiled(vae, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
    """vae.decode(z) for an unscaled latent (B, L, h, w), `tile` x `tile` latent pixels at a time."""
    if not 0 < overlap < tile:
        raise ValueError(f"overlap must be between 0 and tile ({tile}), got {overlap}")
    B, _, h, w = z.shape
    if h <= tile and w <= tile:
        return vae.decode(z)
    f = vae.cfg.downscale
    out = None
    weight = torch.zeros(1, 1, h * f, w * f, device=z.device)
    ys, xs = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
    for y in ys:
        for x in xs:
            th, tw = min(tile, h), min(tile, w)
            part = vae.decode(z[..., y:y + th, x:x + tw]).float()     # (B, 3, th*f, tw*f)
            if out is None:
                out = torch.zeros(B, part.shape[1], h * f, w * f, device=z.device)
            fade = overlap * f
            wy = _ramp(th * f, fade, y > 0, y + th < h).to(z.device)
            wx = _ramp(tw * f, fade, x > 0, x + tw < w).to(z.device)
            wgt = wy[:, None] * wx[None, :]                             # (th*f, tw*f)
            out[..., y * f:(y + th) * f, x * f:(x + tw) * f] += part * wgt
            weight[..., y * f:(y + th) * f, x * f:(x + tw) * f] += wgt
    assert bool((weight > 0).all()), "every pixel is covered by some tile's interior"
    return out / weight
