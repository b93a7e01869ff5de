"""A folder of captioned images as a torch Dataset, in the Hugging Face `imagefolder` layout.

Captions come from either (or both; metadata wins where both exist):
- a `metadata.jsonl` (or `metadata.csv`) in any folder, one record per image with `file_name`
  (relative to that metadata file) and `text` (or `caption`);
- a `.txt` file with the image's name next to it: `cat.jpg` + `cat.txt`.

Real folders contain broken files. A bad image never stops a run: it is logged once, counted in
`skipped`, and the next good image (in file order, so deterministically) is served in its place.
Only when every image is bad does the dataset raise, instead of looping forever.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset

from .transforms import IMAGE_EXTENSIONS, ImageTransform, load_image, sample_generator

log = logging.getLogger("openimagen.data")

CAPTION_KEYS = ("text", "caption")
MISSING_CAPTION_POLICIES = ("error", "skip", "empty")


def _caption_from_record(rec: dict, keys: Sequence[str], where: str) -> str | None:
    for k in keys:
        if k in rec and rec[k] is not None:
            v = rec[k]
            if not isinstance(v, str):
                raise ValueError(f"{where}: field {k!r} must be a string, got {type(v).__name__}: {v!r}")
            return v.strip()
    return None


def _read_metadata(meta: Path, keys: Sequence[str]) -> dict[Path, str]:
    """{image path: caption} from one metadata.jsonl / metadata.csv; file names are relative to it."""
    records: list[tuple[str, dict]] = []
    if meta.suffix == ".jsonl":
        with open(meta, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{meta}:{n}: not valid JSON ({e.msg}); each line must be one object "
                                     'like {"file_name": "cat.jpg", "text": "a cat"}') from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{meta}:{n}: expected a JSON object, got {type(rec).__name__}")
                records.append((f"{meta}:{n}", rec))
    else:
        with open(meta, encoding="utf-8-sig", newline="") as f:
            for n, rec in enumerate(csv.DictReader(f), 2):
                records.append((f"{meta}:{n}", rec))
    out = {}
    for where, rec in records:
        name = rec.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: missing 'file_name' (the image path relative to {meta.parent})")
        cap = _caption_from_record(rec, keys, where)
        if cap is not None:
            out[(meta.parent / name).resolve()] = cap
    return out


def scan_folder(root: str | os.PathLike, caption_keys: Sequence[str] = CAPTION_KEYS,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], dict[Path, str]]:
    """Every image under `root` (sorted, recursive, hidden files ignored) and the captions found for them."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; check the path (it is "
                                f"resolved relative to {os.getcwd()!r})")
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file, not a folder; pass the folder that holds the images")
    exts = {e.lower() for e in extensions}
    images, metas, texts = [], [], {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            ext = p.suffix.lower()
            if ext in exts:
                images.append(p)
            elif name in ("metadata.jsonl", "metadata.csv"):
                metas.append(p)
            elif ext == ".txt":
                texts[p.with_suffix("")] = p
    images.sort()
    captions: dict[Path, str] = {}
    for img in images:
        t = texts.get(img.with_suffix(""))
        if t is not None:
            try:
                captions[img] = t.read_text(encoding="utf-8-sig").strip()
            except UnicodeDecodeError as e:  # a caption read with replacement marks would train on garbage
                raise ValueError(f"caption file {str(t)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 "
                                 "(e.g. iconv -f latin1 -t utf-8)") from None
    resolved = {img.resolve(): img for img in images}
    for meta in sorted(metas):
        found = _read_metadata(meta, caption_keys)
        unknown = [p for p in found if p not in resolved]
        if unknown:
            log.warning("%s lists %d file(s) that are not images in %s, e.g. %s; ignoring them",
                        meta, len(unknown), root, unknown[0])
        for p, cap in found.items():
            if p in resolved:
                captions[resolved[p]] = cap
    return images, captions


class ImageCaptionFolder(Dataset):
    """Captioned images under `root` -> {"image": (3, R, R) in [-1, 1], "caption": str, "index": int}.

    resolution, resize_to, random_crop, hflip: see `transforms.ImageTransform`.
    missing_captions: what to do with images that have no caption: "error" (default), "skip" them,
        or use "" for them ("empty"; they then train the unconditional branch).
    verify: check every file with PIL's cheap header/structure check now; bad files are dropped
        (and counted) before training starts instead of being found one by one while it runs.
    seed: crop and flip randomness comes from (seed, epoch, index); call `set_epoch` each epoch.
    """

    def __init__(self, root: str | os.PathLike, resolution: int, *, resize_to: int | None = None,
                 random_crop: bool = False, hflip: bool = False, missing_captions: str = "error",
                 verify: bool = False, seed: int = 0, caption_keys: Sequence[str] = CAPTION_KEYS,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        if missing_captions not in MISSING_CAPTION_POLICIES:
            raise ValueError(f"missing_captions must be one of {MISSING_CAPTION_POLICIES}, got {missing_captions!r}")
        self.root = Path(root)
        self.transform = ImageTransform(resolution, resize_to=resize_to, random_crop=random_crop, hflip=hflip)
        self.seed, self.epoch = seed, 0
        images, captions = scan_folder(root, caption_keys, extensions)
        if not images:
            raise ValueError(f"no images found in {str(root)!r} (looked recursively for "
                             f"{', '.join(extensions)}); point `root` at the folder that contains them")
        uncaptioned = [p for p in images if p not in captions]
        if uncaptioned and missing_captions == "error":
            ex = uncaptioned[0]
            raise ValueError(
                f"{len(uncaptioned)} of {len(images)} images in {str(root)!r} have no caption, e.g. {str(ex)!r}. "
                f"Add a caption file next to each image ({ex.with_suffix('.txt').name} containing the text), "
                f'or a metadata.jsonl with lines like {{"file_name": "{ex.relative_to(self.root).as_posix()}", '
                '"text": "..."}, or pass missing_captions="skip" / "empty"'
            )
        if missing_captions == "skip":
            if uncaptioned:
                log.warning("skipping %d uncaptioned images in %s", len(uncaptioned), root)
            images = [p for p in images if p in captions]
            if not images:
                raise ValueError(f"none of the images in {str(root)!r} has a caption; add .txt files or a metadata.jsonl")
        self.paths: list[Path] = images
        self._captions: list[str] = [captions.get(p, "") for p in images]
        self.bad: set[int] = set()   # indices found unreadable in this process
        self.verified_bad = 0        # files dropped by `verify`
        if verify:
            self._verify()

    # ------------------------------------------------------------------------------------------
    def _verify(self) -> None:
        from PIL import Image

        keep = []
        for i, p in enumerate(self.paths):
            try:
                with Image.open(p) as im:
                    im.verify()
                keep.append(i)
            except Exception as e:  # noqa: BLE001 -- any failure to parse means "bad file"
                log.warning("skipping unreadable image %s: %s", p, _why(e))
        self.verified_bad = len(self.paths) - len(keep)
        if not keep:
            raise ValueError(self._all_bad_message())
        if self.verified_bad:
            log.warning("%s: %d of %d images are unreadable and were skipped",
                        self.root, self.verified_bad, len(self.paths))
        self.paths = [self.paths[i] for i in keep]
        self._captions = [self._captions[i] for i in keep]

    def _all_bad_message(self) -> str:
        return (f"every image in {str(self.root)!r} failed to decode ({len(self.paths)} files, e.g. "
                f"{str(self.paths[0])!r}); the files are corrupt or not images; check them with an image viewer "
                "or re-export them as PNG/JPEG")

    @property
    def skipped(self) -> int:
        """Bad files found so far in this process (by `verify` and while loading)."""
        return self.verified_bad + len(self.bad)

    @property
    def captions(self) -> list[str]:
        """All captions in index order, e.g. for `embed_captions(ds.captions, ...)`."""
        return list(self._captions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def summary(self) -> str:
        return f"{self.root}: {len(self)} images, {self.skipped} skipped as unreadable"

    def __repr__(self) -> str:
        return f"ImageCaptionFolder({str(self.root)!r}, {len(self)} images, resolution={self.transform.resolution})"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        # Try this image, then the following ones: deterministic, and ends after one lap.
        for j in (index + k for k in range(n)):
            j %= n
            if j in self.bad:
                continue
            try:
                img = load_image(self.paths[j])
            except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad data
                self.bad.add(j)
                log.warning("skipping unreadable image %s: %s (%d skipped so far)", self.paths[j], _why(e), self.skipped)
                continue
            x = self.transform(img, sample_generator(self.seed, self.epoch, j))
            return {"image": x, "caption": self._captions[j], "index": j}
        raise ValueError(self._all_bad_message())


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


__all__ = ["ImageCaptionFolder", "scan_folder", "CAPTION_KEYS"]
