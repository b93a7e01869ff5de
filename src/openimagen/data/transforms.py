"""Image loading and resizing for training data: file -> RGB -> square crop -> (3, H, W) in [-1, 1].

A cascade trains every stage on the same picture at different sizes: the base stage sees it at,
say, 64 px; a super-resolution stage sees it at 256 px and is conditioned on the 64 px version.
Those low-resolution versions must be made with an antialiased filter (a box/bicubic average over
the footprint of each output pixel). Nearest-neighbour or plain bilinear downsampling aliases, and
a model trained on aliased conditioning learns to reproduce the artifacts (imagen-pytorch #94).

Randomness (crop position, flip) never touches the global RNG: callers pass a `torch.Generator`,
and the datasets derive one from (seed, epoch, index) so a sample's crop is reproducible no matter
which DataLoader worker draws it.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------
# Decoding


def load_image(source: str | os.PathLike | bytes | BinaryIO, background: tuple[int, int, int] = (255, 255, 255)):
    """Decode an image file (path, bytes or file object) fully into an 8-bit RGB `PIL.Image`.

    Handles the modes real folders contain: palette (with or without transparency), alpha
    (composited onto `background`, since a transparent pixel has no colour of its own),
    grayscale, 16- and 32-bit integer and float images (rescaled to 8 bit), CMYK; and applies the
    EXIF orientation tag, which phone photos rely on. Decoding is forced here (`img.load()`), so a
    truncated or corrupt file raises now (an `OSError`, `ValueError` or PIL error) rather than later.
    """
    from PIL import Image, ImageOps

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        img.load()
        img = ImageOps.exif_transpose(img)  # returns a copy, so leaving the `with` is safe
    return to_rgb(img, background)


def to_rgb(img, background: tuple[int, int, int] = (255, 255, 255)):
    """Convert any PIL mode to 8-bit RGB (see `load_image`)."""
    from PIL import Image

    if img.mode == "P":
        # A palette image may carry transparency as a palette index; RGBA keeps it.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():  # a float image can hold NaN/inf; its 8-bit cast would be silently garbage
            raise ValueError(f"{int((~np.isfinite(a)).sum())} pixel(s) are NaN or inf (a damaged floating-point "
                             "image); re-export it as an 8- or 16-bit PNG")
        hi = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if img.mode == "F" and a.max(initial=0) <= 1.0:
            hi = 1.0  # float images are conventionally in [0, 1]
        a = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(a)  # (H, W) uint8 -> mode "L"
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


# ----------------------------------------------------------------------------------------------
# Geometry on PIL images (before the tensor exists, so the resize sees full 8-bit detail)


def resize_short_side(img, size: int):
    """Resize so the shorter side is `size` px, keeping the aspect ratio (bicubic, antialiased)."""
    from PIL import Image

    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    # PIL's resize filters widen their support when shrinking, i.e. they antialias.
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def crop_square(img, size: int, random: bool = False, generator: torch.Generator | None = None):
    """Crop a `size` x `size` square: centred, or at a uniformly random position drawn from `generator`."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image; resize it first")
    if random:
        x = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        y = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    else:
        x, y = (w - size) // 2, (h - size) // 2
    return img.crop((x, y, x + size, y + size))


def to_tensor(img) -> Tensor:
    """8-bit RGB PIL image -> contiguous float32 tensor (3, H, W) in [-1, 1]."""
    a = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {a.shape}; call to_rgb first")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def to_pil(x: Tensor):
    """Float images in [-1, 1] -> 8-bit RGB PIL images (the inverse of `to_tensor`):
    (3, H, W) -> one image, (B, 3, H, W) -> a list of B images."""
    from PIL import Image

    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected a (3, H, W) or (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.ndim == 3:
        return Image.fromarray(a.permute(1, 2, 0).numpy())  # (H, W, 3) uint8 -> "RGB"
    return [Image.fromarray(im) for im in a.permute(0, 2, 3, 1).numpy()]  # B x (H, W, 3)


@dataclass(frozen=True)
class ImageTransform:
    """Decoded PIL image -> training tensor (3, resolution, resolution) in [-1, 1].

    resolution: the side of the square output.
    resize_to: the short side is first resized to this (default: `resolution`). A larger value
        with `random_crop=True` trains a super-resolution stage on random patches of a bigger
        picture, as Imagen's SR stages do.
    random_crop: crop at a random position instead of the centre.
    hflip: random horizontal flip with probability 1/2. Off by default: flipping turns a caption
        such as "a red cube left of a ball" into a lie.
    """

    resolution: int
    resize_to: int | None = None
    random_crop: bool = False
    hflip: bool = False

    def __post_init__(self):
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {self.resolution!r}")
        if self.resize_to is not None and self.resize_to < self.resolution:
            raise ValueError(
                f"resize_to={self.resize_to} is smaller than resolution={self.resolution}; "
                "it must be at least the crop size (or None)"
            )

    def __call__(self, img, generator: torch.Generator | None = None) -> Tensor:
        img = resize_short_side(img, self.resize_to or self.resolution)
        img = crop_square(img, self.resolution, random=self.random_crop, generator=generator)
        x = to_tensor(img)  # (3, R, R)
        if self.hflip and bool(torch.rand((), generator=generator) < 0.5):
            x = x.flip(-1)
        return x


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator private to one sample of one epoch, identical in every worker and process."""
    # Distinct large odd multipliers keep (seed, epoch, index) triples from colliding in practice.
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + index * 2_654_435_761) % (2**63 - 1))
    return g


# ----------------------------------------------------------------------------------------------
# Tensor resizing for cascades


def resize(x: Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Resize images (3, H, W) or (B, 3, H, W) to `size`, antialiased when shrinking.

    Bicubic overshoots at edges, so the result is clamped back to [-1, 1].
    """
    if mode not in ("bilinear", "bicubic", "nearest", "area"):
        raise ValueError(f"mode must be 'bilinear', 'bicubic', 'area' or 'nearest', got {mode!r}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images (3, H, W) or (B, 3, H, W), got shape {tuple(x.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    batched = x.ndim == 4
    y = x if batched else x.unsqueeze(0)
    shrinking = size[0] < y.shape[-2] or size[1] < y.shape[-1]
    kw = {"antialias": shrinking, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    y = F.interpolate(y.float(), size=size, mode=mode, **kw).to(x.dtype)
    if mode == "bicubic":
        y = y.clamp(-1.0, 1.0)
    return y if batched else y[0]


def downsample(x: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Antialiased downsample to a `size` x `size` image: the low-res conditioning of an SR stage."""
    if size > min(x.shape[-2:]):
        raise ValueError(f"downsample target {size} is larger than the image {tuple(x.shape[-2:])}")
    return resize(x, size, mode)


def image_pyramid(x: Tensor, resolutions: Sequence[int], mode: str = "bicubic") -> dict[int, Tensor]:
    """All the sizes a cascade needs, e.g. `image_pyramid(img, (64, 256))` -> {64: ..., 256: ...}.

    The largest entry is `x` itself (resized if `x` is not already that size); every smaller one
    is an antialiased downsample of the largest, so all stages see the same picture.
    x: (3, H, W) or (B, 3, H, W) square images in [-1, 1].
    """
    res = sorted({int(r) for r in resolutions})
    if not res or res[0] < 1:
        raise ValueError(f"resolutions must be positive ints, got {tuple(resolutions)!r}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"image_pyramid expects square images, got {tuple(x.shape[-2:])}")
    top = resize(x, res[-1], mode)
    return {r: (top if r == res[-1] else resize(top, r, mode)) for r in res}
