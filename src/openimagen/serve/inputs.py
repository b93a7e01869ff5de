"""What clients send -> library requests: decoding and checking uploaded images, per-stage values and
limits, so a bad request is refused with a message naming the value before it takes a place in the queue.

Uploaded images are stored once under out_dir/inputs/<sha256>.<ext>: edit requests name files (and
their sha256), so a gallery PNG made from an upload reproduces with `--from-png` like any other.
Image fields take base64 (with or without a `data:` prefix); URLs are refused, never fetched.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

from .. import api
from ..edit_request import EditRequest, resolve_edit, resolve_inputs

KINDS = ("txt2img", "img2img", "inpaint", "outpaint", "upscale")
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}


@dataclass
class ModelInfo:
    """The served model, as requests name it and clients see it."""
    name: str | None        # request.model: None = the bundled model, else a folder path or hub id
    sr: str | None
    model: object           # one loaded copy (for resolving defaults; the workers have their own)
    precision: str = "fp32"  # the concrete precision the copies were loaded in: what each PNG records

    @property
    def title(self) -> str:
        return self.name or "openimagen-shapes (bundled)"

    def stages(self) -> list[dict]:
        return [{"index": i, "resolution": s.resolution, "super_resolution": bool(s.config.lowres),
                 "steps": s.config.steps, "guidance": s.config.guidance, "sampler": s.config.sampler}
                for i, s in enumerate(self.model.stages)]


def random_seed() -> int:
    return random.randrange(4294967294)  # A1111's range: seeds that any client can store


def decode_image(data, what: str, settings, *, save: bool = True) -> tuple[Path | None, tuple[int, int], bytes]:
    """base64 (or a data: URI) -> (stored file, (w, h), bytes); ValueError naming `what` and the fix."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data.strip():
        raise ValueError(f"{what} must be a base64-encoded image (PNG, JPEG or WebP)")
    text = data.strip()
    if text.lower().startswith(("http://", "https://", "file:", "ftp://")):
        raise ValueError(f"{what} is a URL; this server never fetches URLs: send the image itself, base64-encoded")
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise ValueError(f"{what}: a data: URI must be base64 (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > settings.max_pixels:
                raise ValueError(f"{what} is {w}x{h} = {w * h} pixels; the limit is {settings.max_pixels} "
                                 "(the model works at its stage sizes anyway: shrink it first)")
            im.load()
    except UnidentifiedImageError:
        raise ValueError(f"{what} is not an image (its bytes are no PNG, JPEG or WebP)") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{what} is a damaged or oversized image ({e}); send a PNG, JPEG or WebP") from None
    if fmt not in FORMATS:
        raise ValueError(f"{what} is a {fmt} image; send PNG, JPEG or WebP")
    path = None
    if save:
        folder = settings.out_dir / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(raw).hexdigest()}.{FORMATS[fmt]}"
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(raw)
            tmp.replace(path)
    return path, (w, h), raw


def inverted_mask(path: Path) -> Path:
    """A1111's inpainting_mask_invert=1: black = repaint. Stored beside the upload."""
    from PIL import Image, ImageOps

    out = path.with_name(path.stem + "-inverted.png")
    if not out.exists():
        with Image.open(path) as im:
            ImageOps.invert(im.convert("L")).save(out.with_name(out.name + ".tmp"), format="PNG")
        out.with_name(out.name + ".tmp").replace(out)
    return out


def check_sampling(values: dict, settings) -> None:
    """steps / sampler / guidance per stage against the limits (the library checks the rest)."""
    from ..diffusion import IF_RESPACINGS, SAMPLERS

    def each(v):
        return v if isinstance(v, list) else [v]

    for s in each(values.get("steps")):
        if s is None or (isinstance(s, str) and s in IF_RESPACINGS):
            continue
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= settings.max_steps:
            raise ValueError(f"steps must be a whole number in 1..{settings.max_steps} or one of "
                             f"{sorted(IF_RESPACINGS)}, got {s!r}")
    for s in each(values.get("sampler")):
        if s is not None and s not in SAMPLERS:
            raise ValueError(f"unknown sampler {s!r}; choose one of {sorted(SAMPLERS)}")
    for g in each(values.get("guidance")):
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g)
                              or not 0 <= g <= 100):
            raise ValueError(f"guidance must be a number in 0..100, got {g!r}")


def check_prompt(prompt, settings, what: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"{what} is empty: describe the image, e.g. 'a red circle above a blue square'")
    for p in prompts:
        if len(p) > settings.max_prompt_chars:
            raise ValueError(f"{what} has {len(p)} characters; the limit is {settings.max_prompt_chars}")
    return prompts


def check_count(num_images: int, batch_count: int, settings) -> None:
    for name, v in (("num_images", num_images), ("batch_count", batch_count)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    if num_images * batch_count > settings.max_images_per_job:
        raise ValueError(f"num_images x batch_count = {num_images * batch_count} images; the limit per job is "
                         f"{settings.max_images_per_job}")


def requests_for(kind: str, fields: dict, info: ModelInfo, settings, *, batch_count: int = 1,
                 seed: int | None = None) -> list:
    """The library requests of one job: `batch_count` copies with seeds seed, seed + 1, ... (A1111's rule,
    so any image can be made again alone). Each is resolved against the model now, so a value the model
    cannot take is refused before the job is queued."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
    check_sampling(fields, settings)
    check_count(fields.get("num_images", 1), batch_count, settings)
    seed = random_seed() if seed is None or seed == -1 else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0 (or -1 for a random one), got {seed!r}")
    fields = {k: v for k, v in fields.items() if v is not None}
    base = dict(model=info.name, sr=info.sr, precision=info.precision, seed=seed, **fields)
    if kind == "txt2img":
        req = api.GenerateRequest(**base)
        api.resolve(info.model, req)
    else:
        req = EditRequest(mode=kind, **base)
        resolve_edit(info.model, resolve_inputs(req))
    return [dataclasses.replace(req, seed=seed + i) for i in range(batch_count)]


def check_mask(mask_path: Path, mask_size, image_size, what: str = "mask") -> None:
    from .. import images

    if tuple(mask_size) != tuple(image_size):
        raise ValueError(f"{what} is {mask_size[0]}x{mask_size[1]} but the image is {image_size[0]}x{image_size[1]}; "
                         "draw the mask at the image's own size")
    images.load_mask(mask_path, size=(image_size[1], image_size[0]), image_name="the image")
