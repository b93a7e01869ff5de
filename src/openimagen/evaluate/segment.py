"""Find the shapes-world objects in an image: palette segmentation, connected components, geometry.

Pipeline (all numpy, no extra dependencies):
  1. 3x3 median filter (at >= 48 px) to drop the speckle noise of generated images; smaller images
     are upsampled bilinearly instead (antialiased edges become sub-pixel geometry);
  2. background = median color of the one-pixel border;
  3. every pixel takes the nearest of {8 object colors, the measured background}, or "unknown" when
     it is farther than MAX_COLOR_DIST from all of them (antialiased edges, off-palette blends);
  4. per color: a morphological opening (>= 48 px) that removes one-pixel rims, then 4-connected
     components; components smaller than MIN_AREA_FRAC of the image are ignored;
  5. shape = nearest prototype in (fill of each cell of a 3x3 grid over the bbox, convex-hull
     solidity); prototypes are renders of every shape and size (sub-pixel shifts, sharp and blurred)
     pushed through steps 1-4 at the input's resolution, so antialiasing, filtering and small-image
     upsampling affect both sides of the comparison alike.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from openimagen.data.shapes import BACKGROUNDS, COLORS, SHAPE_NAMES, SIZES, Obj, Scene, render

MAX_COLOR_DIST = 80.0     # RGB distance beyond which a pixel belongs to no named color
MIN_AREA_FRAC = 0.006     # smallest object, as a fraction of the image area (a small star is ~0.022)
FILTER_MIN_RES = 48       # below this the median filter and opening would erase small objects
_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)   # (8, 3)


def to_rgb_array(image) -> np.ndarray:
    """PIL image, tensor (3,H,W) in [-1,1], or array (H,W,3) uint8 -> float32 (H, W, 3) in [0, 255]."""
    if hasattr(image, "convert"):                     # PIL
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):                      # torch tensor, our [-1, 1] convention
        t = image.detach().float().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape (3, H, W) in [-1, 1], got {tuple(t.shape)}")
        return ((t.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an image array of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 in [0, 255], got dtype {arr.dtype}; "
                         "pass float images as a torch tensor (3, H, W) in [-1, 1]")
    return arr.astype(np.float32)


def median3(arr: np.ndarray) -> np.ndarray:
    """3x3 median per channel with edge padding. (H, W, C) -> (H, W, C)."""
    H, W = arr.shape[:2]
    p = np.pad(arr, ((1, 1), (1, 1), (0, 0)), mode="edge")
    stack = np.stack([p[i:i + H, j:j + W] for i in range(3) for j in range(3)])   # (9, H, W, C)
    return np.median(stack, axis=0)


def _shift_and(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]; out[:-1] &= mask[1:]; out[:, 1:] &= mask[:, :-1]; out[:, :-1] &= mask[:, 1:]
    return out


def _shift_or(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]; out[:-1] |= mask[1:]; out[:, 1:] |= mask[:, :-1]; out[:, :-1] |= mask[:, 1:]
    return out


def opening(mask: np.ndarray) -> np.ndarray:
    """Erode then dilate with the 4-neighbour cross: removes structures one pixel thin."""
    return _shift_or(_shift_and(mask)) & mask


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool mask -> (labels (H, W) int, 0 = none, 1..n; n)."""
    H, W = mask.shape
    none = H * W
    lab = np.where(mask, np.arange(H * W).reshape(H, W), none)
    while True:
        m = lab.copy()                   # each pixel takes the smallest index among itself and neighbours
        m[1:] = np.minimum(m[1:], lab[:-1]); m[:-1] = np.minimum(m[:-1], lab[1:])
        m[:, 1:] = np.minimum(m[:, 1:], lab[:, :-1]); m[:, :-1] = np.minimum(m[:, :-1], lab[:, 1:])
        m = np.where(mask, m, none)
        flat = np.append(m.ravel(), none)
        m = flat[flat[m]]                # pointer jumping: follow the chain of labels twice per pass
        if np.array_equal(m, lab):
            break
        lab = m
    roots, inverse = np.unique(lab, return_inverse=True)
    inverse = inverse.reshape(H, W) + 1
    inverse[~mask] = 0
    return inverse, int(len(roots) - (0 if mask.all() else 1))


def _convex_pixel_count(rows: np.ndarray, x0s: np.ndarray, x1s: np.ndarray) -> float:
    """Pixels a convex shape spanning [x0, x1] on each row would cover: the convex hull of those pixel
    centers, corrected by Pick's theorem (lattice points = area + perimeter / 2 + 1), so a digital
    convex shape scores solidity ~1 at any resolution."""
    pts = sorted(set(zip(x0s.tolist(), rows.tolist())) | set(zip(x1s.tolist(), rows.tolist())))
    if len(pts) < 3:
        return float(len(pts))

    def half(points):
        out = []
        for p in points:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1], dtype=float)   # (K, 2) counter-clockwise
    xs, ys = hull[:, 0], hull[:, 1]
    area = abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2
    perimeter = np.linalg.norm(hull - np.roll(hull, 1, axis=0), axis=1).sum()
    return float(area + perimeter / 2 + 1)


@dataclass(frozen=True)
class Component:
    color: str
    area: int                                   # pixels
    bbox: tuple[int, int, int, int]             # x0, y0, x1, y1 (exclusive), pixels
    center: tuple[float, float]                 # bbox center, image fractions (x, y)
    extent: float                               # longer bbox side, fraction of the image side
    features: tuple[float, ...]                 # 3x3 zone fill fractions, solidity (see _component)


def _component(color: str, ys: np.ndarray, xs: np.ndarray, side: tuple[int, int]) -> Component:
    H, W = side
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    w, h = x1 - x0, y1 - y0
    rows = np.arange(y0, y1)
    # Leftmost / rightmost pixel per row (every row of a 4-connected component is non-empty).
    left = np.full(h, W); right = np.full(h, -1)
    np.minimum.at(left, ys - y0, xs); np.maximum.at(right, ys - y0, xs)
    area = len(xs)
    solidity = min(1.0, area / max(_convex_pixel_count(rows, left, right), 1.0))
    # Zoning: how full each cell of a 3x3 grid over the bbox is. It separates the six shapes by
    # where their mass sits (a cross has empty corners and full arms, a star a hollow bottom middle,
    # a triangle empty top corners) and degrades gracefully on blurry blobs.
    u = np.minimum(((xs + 0.5 - x0) / w * 3).astype(int), 2)
    v = np.minimum(((ys + 0.5 - y0) / h * 3).astype(int), 2)
    cols = np.minimum(((np.arange(x0, x1) + 0.5 - x0) / w * 3).astype(int), 2)
    rws = np.minimum(((np.arange(y0, y1) + 0.5 - y0) / h * 3).astype(int), 2)
    cell_area = np.outer(np.bincount(rws, minlength=3), np.bincount(cols, minlength=3)).ravel()   # (9,)
    zones = np.bincount(v * 3 + u, minlength=9) / np.maximum(cell_area, 1)
    feats = tuple(float(z) for z in zones) + (solidity,)
    return Component(color, area, (x0, y0, x1, y1), ((x0 + x1) / 2 / W, (y0 + y1) / 2 / H),
                     max(w / W, h / H), feats)


_FEATURE_WEIGHTS = np.array([1.0] * 9 + [2.0])   # 9 zones, solidity


class Segmentation:
    """Objects of each palette color in one image. `objects(color)` is sorted by area, largest first."""

    def __init__(self, image):
        arr = to_rgb_array(image)
        self.source_hw = arr.shape[:2]                   # prototypes are drawn at the input's size
        # Median filter and opening remove generated speckle but would erase the tips of small
        # objects in small images, which get upsampled instead.
        self.filtered = min(arr.shape[:2]) >= FILTER_MIN_RES
        if not self.filtered:
            # Small images: bilinear upsampling turns antialiased edges into sub-pixel geometry, so
            # a 7-pixel circle and a 7-pixel cross stop looking alike after thresholding.
            k = -(-FILTER_MIN_RES // min(arr.shape[:2]))
            size = (arr.shape[1] * k, arr.shape[0] * k)
            arr = np.stack([np.asarray(Image.fromarray(arr[..., c]).resize(size, Image.BILINEAR))
                            for c in range(3)], -1)
        self.H, self.W = arr.shape[:2]
        self.raw = arr                                   # unfiltered, for OCR
        if self.filtered:
            arr = median3(arr)
        self.rgb = arr
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        self.background_rgb = np.median(border, axis=0)                            # (3,)
        centers = np.concatenate([_PALETTE, self.background_rgb[None]])            # (9, 3)
        dist = np.linalg.norm(arr[:, :, None, :] - centers[None, None], axis=-1)   # (H, W, 9)
        nearest = dist.argmin(-1)
        nearest[dist.min(-1) > MAX_COLOR_DIST] = -1                                # unknown
        # A palette color indistinguishable from the measured background is background.
        bg_like = np.linalg.norm(_PALETTE - self.background_rgb, axis=1) < MAX_COLOR_DIST / 2
        self.labels = np.where(np.isin(nearest, np.nonzero(bg_like)[0]), len(_PALETTE), nearest)
        self.min_area = max(4, int(MIN_AREA_FRAC * self.H * self.W))
        self._cache: dict[str, list[Component]] = {}

    def background_name(self) -> str:
        names = list(BACKGROUNDS)
        d = [np.linalg.norm(self.background_rgb - np.array(BACKGROUNDS[n])) for n in names]
        return names[int(np.argmin(d))]

    def mask(self, color: str) -> np.ndarray:
        m = self.labels == _PALETTE_NAMES.index(color)
        return opening(m) if self.filtered else m

    def objects(self, color: str) -> list[Component]:
        if color not in self._cache:
            lab, n = label(self.mask(color))
            areas = np.bincount(lab.ravel(), minlength=n + 1)
            comps = []
            for k in np.nonzero(areas >= self.min_area)[0]:
                if k == 0:
                    continue
                ys, xs = np.nonzero(lab == k)
                comps.append(_component(color, ys, xs, (self.H, self.W)))
            self._cache[color] = sorted(comps, key=lambda c: -c.area)
        return self._cache[color]

    def all_objects(self) -> list[Component]:
        return sorted((c for name in _PALETTE_NAMES for c in self.objects(name)), key=lambda c: -c.area)

    def shape_of(self, comp: Component) -> str:
        p = _prototypes(*self.source_hw)
        d = np.abs((p.features - np.array(comp.features)) * _FEATURE_WEIGHTS).sum(1)
        return p.shapes[int(np.argmin(d))]

    def size_of(self, comp: Component) -> str:
        """"small" or "big": whichever clean render of this shape has the nearer extent. Measured,
        not nominal, extents: a star's thin tips shrink under filtering more than a square's sides."""
        p, shape = _prototypes(*self.source_hw), self.shape_of(comp)
        best = min(((abs(e - comp.extent), z) for e, z, s in zip(p.extents, p.sizes, p.shapes)
                    if s == shape and z in ("small", "big")))
        return best[1]


@dataclass(frozen=True)
class _Prototypes:
    features: np.ndarray        # (N, 10)
    shapes: list[str]
    sizes: list[str]
    extents: list[float]


@lru_cache(maxsize=16)
def _prototypes(H: int, W: int) -> _Prototypes:
    """Every shape at every size, rendered cleanly and segmented by the same pipeline as the input."""
    side = min(H, W)   # renders are square; features are scale-free, so the smaller side will do
    feats, shapes, sizes, extents = [], [], [], []
    # Sub-pixel offsets: pixelisation depends on placement, which matters most for the 7-pixel
    # objects of 32 px images, so small images get a denser grid of offsets.
    steps = (0.0, 0.25, 0.5, 0.75) if side < FILTER_MIN_RES else ((0.0, 0.5) if side < 96 else (0.0,))
    shifts = [(dx, dy) for dx in steps for dy in steps]
    for shape in SHAPE_NAMES:
        for size in SIZES:
            for (dx, dy), blur in itertools.product(shifts, (0.0, 0.6)):
                c = (0.5 + dx / side, 0.5 + dy / side)
                img = render(Scene("single", (Obj("red", shape, size, c),), "gray"), side)
                if blur:   # soft edges, as in generated images
                    img = img.filter(ImageFilter.GaussianBlur(blur * side / 32))
                comps = Segmentation(img).objects("red")
                if comps:
                    feats.append(comps[0].features)
                    shapes.append(shape); sizes.append(size); extents.append(comps[0].extent)
    return _Prototypes(np.array(feats), shapes, sizes, extents)
