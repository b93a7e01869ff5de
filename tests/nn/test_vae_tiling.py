"""Tiled VAE decoding (nn/vae_tiling.py): the blend is exact for a local decoder, and close for a real one.

1. A decoder whose receptive field is smaller than the overlap (nearest x4, then a 3x3 conv) sees the same
   pixels in every tile, so tiled must equal untiled everywhere, seams included (float rounding only).
2. The x4 upscaler's VAE design (tiny widths, random weights): each tile has its own GroupNorm statistics and
   attention context, so tiled differs from untiled everywhere. Stated tolerance, measured on this fixture
   (seeded): mean |error| <= 0.2 away from the seams (output range about +-3), and no seam step: the error in
   the overlap bands is at most 1.5 x the error away from them (no tile-border artefact on top).
"""
import torch
import torch.nn.functional as F
from torch import nn

from openimagen.nn.vae import AutoencoderKL, VAEConfig
from openimagen.nn.vae_tiling import _starts, decode_tiled


class LocalDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.cfg = VAEConfig(block_out_channels=(8, 8, 8))  # downscale 4
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def decode(self, z):
        return self.conv(F.interpolate(z, scale_factor=4.0, mode="nearest"))


def _smooth_latent(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(1, 4, h // 4, w // 4, generator=g), size=(h, w), mode="bicubic")


def _bands(n, tile, overlap, f=4):
    band = torch.zeros(n * f, dtype=torch.bool)
    for s in _starts(n, tile, tile - overlap)[1:]:
        band[s * f:(s + overlap) * f] = True
    return band[:, None] | band[None, :]


def test_blend_is_exact_for_a_local_decoder_seams_included():
    dec = LocalDecoder()
    z = torch.randn(2, 4, 37, 29, generator=torch.Generator().manual_seed(1))  # ragged last tiles
    with torch.no_grad():
        full, tiled = dec.decode(z), decode_tiled(dec, z, tile=12, overlap=4)
    assert tiled.shape == full.shape == (2, 3, 148, 116)
    assert (tiled - full).abs().max().item() < 1e-5


def test_single_tile_is_the_plain_decode():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(block_out_channels=(32, 32, 64))).eval()
    z = _smooth_latent(16, 16)
    with torch.no_grad():
        assert torch.equal(decode_tiled(vae, z, tile=16, overlap=4), vae.decode(z))


def test_real_vae_tiled_is_close_away_from_seams_and_shows_no_seam_step():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(block_out_channels=(32, 32, 64))).eval()
    z = _smooth_latent(48, 48)
    with torch.no_grad():
        full, tiled = vae.decode(z), decode_tiled(vae, z, tile=24, overlap=8)
    err = (tiled - full).abs()
    border = _bands(48, 24, 8)
    inside, at_seams = err[..., ~border].mean().item(), err[..., border].mean().item()
    print(f"mean |tiled - untiled|: {inside:.3f} away from seams, {at_seams:.3f} in the overlap bands "
          f"(output range {full.abs().max().item():.2f})")
    assert inside <= 0.2
    assert at_seams <= 1.5 * inside
