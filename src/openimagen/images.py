"""A user's image and mask files -> tensors for editing, with one clear error or note per problem.

    image = load_image("photo.png")                      # (1, 3, H, W) float32 in [-1, 1]
    mask = load_mask("mask.png", size=image.shape[-2:])  # (1, 1, H, W) float32 in [0, 1]; white = repaint

What a file may hold, and what happens to it (one logged line per file names every conversion):
- palette colours, 16-bit (or float) depth, grayscale, CMYK: converted to 8-bit RGB (the models see 8 bits);
- transparent pixels: an image is composited on white, a mask on black (transparent = keep);
- an EXIF orientation tag (phone photos): applied, to the image and the mask alike;
- several frames (GIF, TIFF): the first is used;
- more than MAX_PIXELS pixels: refused. Inputs are resized to each stage's size anyway (short side = the
  stage's resolution, aspect kept, as DeepFloyd IF does; editing.py), so a bigger file only costs memory.
A missing file raises FileNotFoundError, anything else unusable `ImageInputError` (a ValueError). Values
come from 8-bit integers, so they are finite by construction (a float image with NaN/inf pixels is refused). PIL only; nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("openimagen.images")

MAX_PIXELS = 64_000_000        # 8000 x 8000; one float32 copy of that is 770 MB
MASK_THRESHOLD = 0.5           # IF / diffusers: >= 0.5 repaints (editing.py thresholds again after resizing)
RESIZE_RULE = ("inputs are resized to each stage's size anyway (short side = the stage's resolution, aspect kept, "
               "as DeepFloyd IF does)")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class ImageInputError(ValueError):
    """An input image or mask that cannot be used as it is; the message names the file and the fix."""


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes: what a request stores to know it has the same input again."""
    return hashlib.sha256(_read(Path(path), "image")).hexdigest()


def load_image(path: str | os.PathLike, *, sha256: str | None = None) -> Tensor:
    """An image file as (1, 3, H, W) float32 in [-1, 1] at the file's own size (orientation applied).
    `sha256`: refuse the file unless its bytes have this hash (when a stored request is run again)."""
    from .data.transforms import to_tensor

    img, notes = _decode(Path(path), "image", sha256)
    if _has_transparency(img):
        notes.append("transparent pixels composited on white (to repaint them, give a mask that is white there)")
    img = _flatten_file(img, (255, 255, 255), path, "image")
    _note(path, notes)
    return to_tensor(img).unsqueeze(0)  # (1, 3, H, W)


def load_mask(path: str | os.PathLike, *, size: tuple[int, int] | None = None, image_name: str = "the image",
              sha256: str | None = None, check_coverage: bool = True) -> Tensor:
    """A mask file as (1, 1, H, W) float32 in [0, 1]: white (>= 0.5 after resizing) = repaint, black = keep.

    `size` = (H, W) of the image it goes with: another size is refused (resize the mask yourself, so its
    edges stay where you drew them). `check_coverage` refuses a mask that repaints nothing or everything.
    """
    img, notes = _decode(Path(path), "mask", sha256)
    if _has_transparency(img):
        notes.append("transparent pixels read as black (keep); white marks what to repaint")
    img = _flatten_file(img, (0, 0, 0), path, "mask").convert("L")
    _note(path, notes)
    w, h = img.size
    if size is not None and (h, w) != tuple(int(s) for s in size):
        H, W = (int(s) for s in size)
        raise ImageInputError(f"mask {path} is {w}x{h} but {image_name} is {W}x{H}; the mask must have the image's "
                              f"size (white = repaint, black = keep): resize or redraw it at {W}x{H}")
    mask = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(1, 1, h, w).float() / 255.0
    if check_coverage:
        repaint = mask >= MASK_THRESHOLD
        if not repaint.any():
            raise ImageInputError(
                f"mask {path} is black everywhere (no pixel at 50% grey or brighter): nothing would be repainted; "
                "paint white where the image should change, or drop the mask to redraw the whole image (img2img)")
        if repaint.all():
            raise ImageInputError(
                f"mask {path} is white everywhere: every pixel would be repainted, which is img2img at the same "
                "strength (drop the mask) or, at strength 1, text-to-image (openimagen generate); paint black "
                "where the image should stay")
    return mask


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as load_image will see it (EXIF orientation applied), without decoding it."""
    img, _ = _open(Path(path), "image")
    with img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that turn the picture a quarter
            w, h = h, w
    return h, w


# ----------------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    if path.is_dir():
        raise ImageInputError(f"{what} {path} is a folder; give the path of an image file (PNG, JPEG, WebP ...)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no such file") from None


def _open(path: Path, what: str, sha256: str | None = None, data: bytes | None = None):
    """Open (header only) and refuse what is not an image or is too large; -> (PIL image, bytes)."""
    from PIL import Image, UnidentifiedImageError

    data = _read(path, what) if data is None else data
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageInputError(f"{what} {path} is not the file the request was made with (its sha256 differs); "
                              "restore that file, or give the path of an unchanged copy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit follows
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageInputError(f"{what} {path} is far over the {MAX_PIXELS / 1e6:g}-megapixel limit; "
                              f"{RESIZE_RULE}: shrink it first, e.g. to 2048 px on the long side") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageInputError(f"{what} {path} is not a readable image ({_one_line(e)}); "
                              "save it again as PNG or JPEG") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageInputError(f"{what} {path} is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the "
                              f"{MAX_PIXELS / 1e6:g}-megapixel limit; {RESIZE_RULE}: shrink it first, "
                              "e.g. to 2048 px on the long side")
    if w < 1 or h < 1:
        raise ImageInputError(f"{what} {path} has no pixels ({w}x{h})")
    return img, data


def _decode(path: Path, what: str, sha256: str | None):
    """Decode fully (a truncated file fails here, not later) and list the conversions worth a note."""
    from PIL import ImageOps

    img, _ = _open(path, what, sha256)
    notes = []
    try:
        with img:
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"{img.n_frames} frames: the first is used")
            rawmodes = " ".join(str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in img.tile)
            img.load()
            if img.mode.startswith("I;16") or ";16" in rawmodes or img.mode == "I":
                notes.append("16-bit depth reduced to 8 bits per channel")
            elif img.mode == "F":
                notes.append("floating-point pixels rescaled to 8 bits per channel")
            if img.mode == "P":
                notes.append("palette colours converted to RGB")
            img = ImageOps.exif_transpose(img)  # a copy, so leaving the `with` is safe
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageInputError(f"{what} {path} is corrupt or truncated ({_one_line(e)}); "
                              "save it again as PNG or JPEG") from None
    return img, notes


def _has_transparency(img) -> bool:
    """True if some pixel is not fully opaque (an RGBA screenshot that is opaque everywhere needs no note)."""
    if img.mode == "P" or "transparency" in img.info:
        if "transparency" not in img.info:
            return False
        img = img.convert("RGBA")
    if img.mode not in _ALPHA_MODES:
        return False
    lo, _ = img.getchannel(img.mode[-1]).getextrema()  # the alpha band is last in every alpha mode
    return lo < 255


def _flatten(img, background):
    """8-bit RGB with transparency composited on `background` (data.transforms.to_rgb does every mode)."""
    from .data.transforms import to_rgb

    if img.mode in ("L", "RGB") and "transparency" in img.info:  # a tRNS colour key, not an alpha band
        img = img.convert("RGBA")
    return to_rgb(img, background)


def _flatten_file(img, background, path, what: str):
    """`_flatten`, with a file that cannot be converted (NaN pixels) refused by name."""
    try:
        return _flatten(img, background)
    except ValueError as e:
        raise ImageInputError(f"{what} {path}: {e}") from None


def _note(path, notes: list[str]) -> None:
    if notes:
        log.warning("%s: %s", path, "; ".join(notes))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
