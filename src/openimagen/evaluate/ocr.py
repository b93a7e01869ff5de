"""Read the word on a shapes-world sign with Tesseract (the `tesseract` command, called by subprocess).

The sign is the largest non-background region; its inside is upscaled to ~120 px tall, binarised with
Otsu's threshold and read as one line of capital letters. The reading is snapped to the sign
vocabulary when it is within one edit of exactly one word: the vocabulary is built with pairwise
edit distance >= 2, so a one-letter OCR slip cannot turn one word into another.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess

import numpy as np
from PIL import Image

from openimagen.data.shapes import WORDS
from openimagen.data.shapes_captions import edit_distance  # one definition, shared with the sign words

INSTALL_HINT = "install Tesseract OCR (Debian/Ubuntu: apt-get install tesseract-ocr; macOS: brew install tesseract)"


class OCRUnavailable(RuntimeError):
    """The tesseract binary is not on PATH."""


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def snap_to_vocabulary(text: str, vocabulary=WORDS) -> str:
    near = [w for w in vocabulary if edit_distance(text, w) <= 1]
    return near[0] if len(near) == 1 else text


def _otsu(gray: np.ndarray) -> float:
    hist = np.bincount(gray.astype(np.uint8).ravel(), minlength=256).astype(float)
    p = hist / hist.sum()
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(np.argmax(between))


def read_sign(rgb: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """OCR the inside of `box` (x0, y0, x1, y1 pixels) of an (H, W, 3) float image. Returns capitals."""
    if not tesseract_available():
        raise OCRUnavailable(f"the word attribute needs the `tesseract` command: {INSTALL_HINT}")
    x0, y0, x1, y1 = box
    inset = max(1, round(0.03 * rgb.shape[0]))          # skip the antialiased sign border
    crop = rgb[y0 + inset:y1 - inset, x0 + inset:x1 - inset].mean(-1)     # (h, w) gray
    if crop.shape[0] < 4 or crop.shape[1] < 4:
        return ""
    scale = 120 / crop.shape[0]
    big = Image.fromarray(crop.clip(0, 255).astype(np.uint8)).resize(
        (max(1, round(crop.shape[1] * scale)), 120), Image.LANCZOS)
    arr = np.asarray(big)
    binary = np.where(arr > _otsu(arr), 255, 0).astype(np.uint8)
    binary = np.pad(binary, 30, constant_values=255)    # tesseract wants a quiet margin
    buf = io.BytesIO()
    Image.fromarray(binary).save(buf, format="PNG")
    proc = subprocess.run(
        ["tesseract", "stdin", "stdout", "--psm", "7", "-c", "tessedit_char_whitelist=ABCDEFGHIJKLMNOPQRSTUVWXYZ"],
        input=buf.getvalue(), capture_output=True, timeout=30,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"})   # one thread: faster on small images, fair on shared CPUs
    if proc.returncode != 0:
        raise OCRUnavailable(f"tesseract failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-300:]}")
    text = "".join(ch for ch in proc.stdout.decode(errors="replace").upper() if "A" <= ch <= "Z")
    return snap_to_vocabulary(text)
