"""An edit's image at every stage: the sizes each stage can take, resizing images and masks to them, and
the padded canvas of outpainting.

A stage's size for an (h, w) image follows DeepFloyd IF's resize rule (diffusers' IF pipelines,
stage3_and_editing.md §2.4): the short side becomes the stage's resolution and the long side
round(resolution / m * aspect) * m, with m = 8 for IF (here also a multiple of the U-Net's downsampling,
so IF-II gets multiples of 16) and the U-Net's multiple for our stages. Outpainting needs more: the whole
canvas scaled without rounding (`exact_size`), so the original keeps its place and the crop can be undone.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from .nn.efficient_unet import EfficientUNetConfig

FILLS = ("edge", "reflect", "gray")   # what the new area of an outpainting canvas starts as
FITS = ("round", "refuse")            # an outpainting canvas the U-Nets cannot take: grow it, or raise
SIDES = ("left", "right", "top", "bottom")


# ----------------------------------------------------------------------------------------------
# sizes


def unet_multiple(stage) -> int:
    """The multiple of the U-Net's downsampling that a stage's height and width must be."""
    cfg = stage.config.unet
    levels = len(cfg.dim_mults) if isinstance(cfg, EfficientUNetConfig) else len(cfg.block_out_channels)
    return 2 ** (levels - 1)


def rounding(stage) -> int:
    """What a stage's sides are rounded to: the U-Net's multiple (and 8, IF's rule, for IF stages)."""
    m = unet_multiple(stage)
    return m * 8 // math.gcd(m, 8) if stage.config.unet_kind == "if" else m


def stage_size(stage, h: int, w: int) -> tuple[int, int]:
    """An (h, w) image's size at `stage` by IF's resize rule (Python's round, as diffusers)."""
    r, m = stage.resolution, rounding(stage)
    if w >= h:
        return r, int(round(r / m * (w / h)) * m)
    return int(round(r / m / (w / h)) * m), r


def exact_size(stage, h: int, w: int) -> tuple[int, int] | None:
    """The stage's size for an (h, w) canvas scaled by resolution / short side with no rounding, or None
    when that is not whole multiples of what the stage takes."""
    r, m, short = stage.resolution, rounding(stage), min(h, w)
    size = tuple(Fraction(d * r, short) for d in (h, w))
    if all(s.denominator == 1 and s.numerator % m == 0 for s in size):
        return int(size[0]), int(size[1])
    return None


def valid_size(cascade, h: int, w: int, *, stop_at: int | None = None) -> bool:
    """Whether an (h, w) canvas maps exactly (no rounding, no crop) onto every stage that runs."""
    return all(exact_size(s, h, w) is not None for s in cascade.stages[:stop_at])


def nearest_valid_sizes(cascade, h: int, w: int, *, stop_at: int | None = None) -> list[tuple[int, int]]:
    """The nearest valid canvases with the same short side: the largest smaller and the smallest larger
    long side (either may be missing)."""
    short, long = min(h, w), max(h, w)
    as_hw = (lambda L: (short, L)) if w >= h else (lambda L: (L, short))
    ok = lambda L: valid_size(cascade, *as_hw(L), stop_at=stop_at)  # noqa: E731
    below = next((L for L in range(long - 1, short - 1, -1) if ok(L)), None)
    above = next((L for L in range(long + 1, 8 * long + 64) if ok(L)), None)
    return [as_hw(L) for L in (below, above) if L is not None]


# ----------------------------------------------------------------------------------------------
# images and masks at a stage's size


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic with antialiasing (PIL's kernel, which IF resizes with), clamped to [-1, 1]; an image
    already at `size` is returned as it is (float32), so tensors of the stage's size pass bit for bit."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    return F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Resized like the image, then thresholded as IF does: >= 0.5 -> 1 (repaint), else 0 (keep)."""
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return (mask >= 0.5).float()


# ----------------------------------------------------------------------------------------------
# outpainting canvases


def check_extension(pads: dict) -> None:
    for k in SIDES:
        v = pads[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be a whole number of pixels >= 0, got {v!r}")
    if not any(pads.values()):
        raise ValueError("nothing to extend: give left, right, top or bottom > 0 (to change the image itself, "
                         "use img2img or inpaint)")


def fit_extension(cascade, h: int, w: int, pads: dict, fit: str, stop_at: int | None = None) -> dict:
    """The extra pixels per side that make the extended canvas map exactly onto every stage: none when it
    already does; with fit="round" the fewest that do (on the sides being extended); fit="refuse" raises
    naming the nearest valid canvas sizes."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {list(FITS)}")
    H, W = h + pads["top"] + pads["bottom"], w + pads["left"] + pads["right"]
    extra = dict.fromkeys(SIDES, 0)
    if valid_size(cascade, H, W, stop_at=stop_at):
        return extra
    near = nearest_valid_sizes(cascade, H, W, stop_at=stop_at)
    larger = [s for s in near if s[0] >= H and s[1] >= W]
    if fit == "refuse" or not larger:
        sizes = ", ".join(f"{a}x{b}" for a, b in near) or "none with this short side"
        takes = ", ".join(f"{s.resolution} px: multiples of {rounding(s)}" for s in cascade.stages[:stop_at])
        raise ValueError(f"the extended canvas {H}x{W} does not scale onto every stage in whole multiples of its "
                         f"U-Net's downsampling (short side -> {takes}); nearest valid canvas sizes: {sizes} "
                         "(change the extension, or fit='round' to paint a larger canvas and crop it back)")
    extra["top"], extra["bottom"] = _split(larger[0][0] - H, pads["top"], pads["bottom"])
    extra["left"], extra["right"] = _split(larger[0][1] - W, pads["left"], pads["right"])
    return extra


def pad_canvas(image: Tensor, pads: dict, fill: str) -> tuple[Tensor, Tensor]:
    """The canvas (`fill` in the new area) and its mask (1, 1, H, W): 1 there, 0 over the image."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {list(FILLS)}")
    h, w = image.shape[-2:]
    if fill == "reflect" and any(pads[k] >= (h if k in ("top", "bottom") else w) for k in SIDES):
        raise ValueError(f"fill='reflect' needs each extension smaller than the image ({h}x{w}); use fill='edge'")
    p = tuple(pads[k] for k in SIDES)  # F.pad's order: last dim first
    if fill == "gray":
        canvas = F.pad(image, p, value=0.0)
    else:
        canvas = F.pad(image, p, mode="replicate" if fill == "edge" else "reflect")
    return canvas, F.pad(torch.zeros(1, 1, h, w), p, value=1.0)


def crop_back(x: Tensor, canvas_hw: tuple[int, int], extra: dict) -> Tensor:
    """A stage's image of the grown canvas, cut back to the requested one in that stage's pixels (to the
    nearest pixel where the canvas does not scale to whole pixels)."""
    H, W = canvas_hw
    scale = Fraction(x.shape[-2] if H <= W else x.shape[-1], min(H, W))
    y0, y1 = round(extra["top"] * scale), round((H - extra["bottom"]) * scale)
    x0, x1 = round(extra["left"] * scale), round((W - extra["right"]) * scale)
    return x[..., y0:y1, x0:x1]


def extend_to(h: int, w: int, *, height: int | None = None, width: int | None = None,
              aspect: float | None = None) -> dict:
    """The extension {left, right, top, bottom} that grows an (h, w) image to a target size or aspect ratio
    (width / height), centred (an odd pixel goes right / bottom)."""
    if aspect is not None:
        if height is not None or width is not None:
            raise ValueError("give a target size (height/width) or an aspect ratio, not both")
        if isinstance(aspect, bool) or not isinstance(aspect, (int, float)) or not aspect > 0:
            raise ValueError(f"aspect must be a positive width / height ratio, got {aspect!r}")
        height, width = (h, max(w, round(h * aspect))) if w / h < aspect else (max(h, round(w / aspect)), w)
    height, width = height or h, width or w
    if height < h or width < w:
        raise ValueError(f"the target {height}x{width} is smaller than the image {h}x{w}; outpainting only "
                         "extends (crop the image to shrink it)")
    (top, bottom), (left, right) = _split(height - h, 1, 1), _split(width - w, 1, 1)
    return dict(left=left, right=right, top=top, bottom=bottom)


def _split(extra: int, a: int, b: int) -> tuple[int, int]:
    """Share `extra` pixels between the two sides of an axis: between both when both are extended (the odd
    one to the second), else to the one being extended, else to the second."""
    if a and b:
        return extra // 2, extra - extra // 2
    return (extra, 0) if a else (0, extra)
