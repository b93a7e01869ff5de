"""What the synchronous compatibility routes share: the size policy and waiting for a job's images.

Size policy: a cascade makes a few sizes (one per stage). A client asking for another size (A1111's
default 512x512 on a 64 px model) gets the smallest stage prefix whose output is at or above it (else
every stage), centre-cropped to the asked aspect and resized with Lanczos; `info` says so. The PNGs in
the gallery keep the model's own size (and reproduce with --from-png); only the answer is resized.
"""
from __future__ import annotations

import base64
import io

from .events import wait_done


def plan_size(resolutions: list[int], width: int, height: int) -> tuple[int, int]:
    """(stop_at, native size) for a requested width x height."""
    for i, res in enumerate(resolutions):
        if res >= max(width, height):
            return i + 1, res
    return len(resolutions), resolutions[-1]


def fit(img, width: int, height: int):
    """Centre-crop to width:height, then Lanczos to exactly width x height (no change if it already is)."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (width, height):
        return img
    target = width / height
    if abs(w / h - target) > 1e-6:
        if w / h > target:
            cw = round(h * target)
            img = img.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
        else:
            ch = round(w / target)
            img = img.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def size_note(native: tuple[int, int], width: int, height: int, stop_at: int, n_stages: int) -> str | None:
    if native == (width, height):
        return None
    return (f"the model made {native[0]}x{native[1]} (stage {stop_at} of {n_stages}: the nearest size at or above "
            f"{width}x{height}) and it was resized to {width}x{height} with Lanczos")


async def run_sync(c, job, request) -> None:
    c.queue.submit(job)
    await wait_done(job, request, c.queue)


def encoded_images(c, job, width: int, height: int) -> tuple[list[str], list[str], list[str | None]]:
    """(raw base64 PNGs without a data: prefix, their infotexts, size notes) of a finished job. An image
    that needs no resize is sent as its file, with our PNG text intact."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .. import infotext

    images, texts, notes = [], [], []
    for rec in job.images:
        path = c.gallery.path(rec)
        with Image.open(path) as im:
            text = im.text.get(infotext.PNG_KEY, "")
            native = im.size
            note = size_note(native, width, height, job.meta.get("stop_at", 0), len(c.info.model.stages))
            if note is None:
                raw = path.read_bytes()
            else:
                text += f", Resized: {native[0]}x{native[1]} to {width}x{height} (Lanczos)"
                info = PngInfo()
                info.add_text(infotext.PNG_KEY, text)
                buf = io.BytesIO()
                fit(im.convert("RGB"), width, height).save(buf, format="PNG", pnginfo=info)
                raw = buf.getvalue()
        images.append(base64.b64encode(raw).decode("ascii"))
        texts.append(text)
        notes.append(note)
    return images, texts, notes
