"""Captioned images streamed from tar shards (the WebDataset layout), ready for many workers and GPUs.

A shard is a plain tar file; files that share a basename form one sample:
    000000012.jpg  000000012.txt          (or 000000012.json with {"caption": ...} / {"text": ...})
Images may be .jpg/.jpeg/.png/.webp. Shards are read sequentially, which is what makes this layout
fast on network file systems and object stores; the `webdataset` package does the tar parsing and
is imported only when iteration starts.

Splitting: every (node, worker) pair is one consumer. With at least as many shards as consumers each
consumer reads its own shards; with fewer, every consumer reads all shards and keeps every k-th
sample, so small datasets still work on many GPUs (at the cost of extra reading). Consumers can end
up with slightly different sample counts; a DDP training loop should count steps, not batches.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import tarfile
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .transforms import ImageTransform, load_image, sample_generator, to_pil

log = logging.getLogger("openimagen.data")

SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("caption", "text")


# ----------------------------------------------------------------------------------------------
# Shard lists


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A shard spec -> a list of shard paths/URLs.

    Accepts a directory (all `*.tar` in it, sorted), a glob (`data/*.tar`), a brace pattern
    (`data/shard-{000000..000099}.tar`), a URL webdataset can open (`pipe:`, `http(s)://`, ...),
    or a list of any of these. Local files must exist.
    """
    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    out: list[str] = []
    for spec in shards:
        spec = os.fspath(spec)
        if "://" in spec or spec.startswith("pipe:"):
            from braceexpand import braceexpand  # a dependency of webdataset

            out.extend(braceexpand(spec))
        elif os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
            if not found:
                raise ValueError(f"no .tar shards in folder {spec!r}; write some with write_shards() "
                                 "or folder_to_shards()")
            out.extend(found)
        elif any(c in spec for c in "*?[") and "{" not in spec:
            found = sorted(glob.glob(spec))
            if not found:
                raise FileNotFoundError(f"no files match the shard pattern {spec!r}")
            out.extend(found)
        else:
            from braceexpand import braceexpand

            for p in braceexpand(spec):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"shard {p!r} does not exist (from {spec!r}); check the path or pattern")
                out.append(p)
    if not out:
        raise ValueError(f"the shard spec {shards!r} names no shards")
    return out


def distributed_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): from the arguments, else torch.distributed if initialised, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


# ----------------------------------------------------------------------------------------------
# Reading


class ImageCaptionShards(IterableDataset):
    """Tar shards -> {"image": (3, R, R) in [-1, 1], "caption": str, "key": str}, streamed.

    shards: see `expand_shards`.
    resolution, resize_to, random_crop, hflip: see `transforms.ImageTransform`.
    shuffle_buffer: samples held for shuffling (0: stream order). Shard order is also shuffled
        per epoch when `shuffle_shards`; both are seeded by (seed, epoch), so call `set_epoch`.
    rank, world_size: this process's place among the nodes; by default from torch.distributed.
    Corrupt tars, undecodable images and samples without a caption are logged, counted in
    `skipped` (per process: each DataLoader worker counts its own) and passed over.
    """

    def __init__(self, shards, resolution: int, *, resize_to: int | None = None, random_crop: bool = False,
                 hflip: bool = False, shuffle_buffer: int = 1000, shuffle_shards: bool = True, seed: int = 0,
                 caption_keys: Sequence[str] = CAPTION_KEYS, rank: int | None = None,
                 world_size: int | None = None):
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shards = expand_shards(shards)
        self.transform = ImageTransform(resolution, resize_to=resize_to, random_crop=random_crop, hflip=hflip)
        self.shuffle_buffer, self.shuffle_shards = shuffle_buffer, shuffle_shards
        self.seed, self.epoch = seed, 0
        self.caption_keys = tuple(caption_keys)
        self._rank, self._world = rank, world_size
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        return f"ImageCaptionShards({len(self.shards)} shards, resolution={self.transform.resolution})"

    # consumers --------------------------------------------------------------------------------
    def _consumer(self) -> tuple[int, int]:
        rank, world = distributed_rank_world(self._rank, self._world)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def _my_shards(self) -> tuple[list[str], int, int]:
        """(shards to read, sample stride, sample offset) for this consumer."""
        cid, n = self._consumer()
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(shards)  # same order on every consumer
        if len(shards) >= n:
            return shards[cid::n], 1, 0
        return shards, n, cid

    # decoding ---------------------------------------------------------------------------------
    def _handler(self, exn: Exception) -> bool:
        self.skipped += 1
        log.warning("skipping unreadable shard data: %s: %s", type(exn).__name__, str(exn)[:200])
        return True  # keep going

    def _caption(self, sample: dict) -> str | None:
        if "txt" in sample:
            return sample["txt"].decode("utf-8", errors="replace").strip()
        if "json" in sample:
            meta = json.loads(sample["json"])
            for k in self.caption_keys:
                if isinstance(meta.get(k), str):
                    return meta[k].strip()
        return None

    def _decode(self, sample: dict) -> dict | None:
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        ext = next((e for e in SHARD_IMAGE_EXTENSIONS if e in sample), None)
        try:
            caption = self._caption(sample)
            if ext is None or caption is None:
                missing = "image (.jpg/.png/.webp)" if ext is None else "caption (.txt or .json)"
                raise ValueError(f"sample has no {missing}; it has {sorted(k for k in sample if not k.startswith('__'))}")
            img = load_image(sample[ext])
        except Exception as e:  # noqa: BLE001 -- bad bytes raise many exception types
            self.skipped += 1
            log.warning("skipping sample %s: %s: %s (%d skipped so far)", where, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "", self.skipped)
            return None
        g = sample_generator(self.seed, self.epoch, zlib.crc32(where.encode()))
        return {"image": self.transform(img, g), "caption": caption, "key": str(sample["__key__"])}

    # iteration --------------------------------------------------------------------------------
    def _raw_samples(self) -> Iterator[dict]:
        import webdataset as wds

        shards, stride, offset = self._my_shards()
        src = wds.tarfile_samples([{"url": s} for s in shards], handler=self._handler)
        for n, sample in enumerate(src):
            if n % stride == offset:
                yield sample

    def __iter__(self) -> Iterator[dict]:
        cid, _ = self._consumer()
        rng = random.Random(f"{self.seed}/{self.epoch}/{cid}")
        # Samples wait in the buffer still encoded (bytes), so a large buffer stays cheap.
        buf: list[dict] = []
        for sample in self._raw_samples():
            if len(buf) < self.shuffle_buffer:
                buf.append(sample)
                continue
            if buf:  # emit a random buffered sample and keep the new one in its place
                i = rng.randrange(len(buf))
                buf[i], sample = sample, buf[i]
            item = self._decode(sample)
            if item is not None:
                yield item
        rng.shuffle(buf)
        for sample in buf:
            item = self._decode(sample)
            if item is not None:
                yield item


# ----------------------------------------------------------------------------------------------
# Writing


def _sniff_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError("cannot tell the format of these image bytes; pass the item with an 'ext' "
                     "(jpg, png or webp)")


def _encode_image(image, ext: str | None, image_format: str) -> tuple[bytes, str]:
    """An item's image (path, encoded bytes, PIL image, or (3,H,W) tensor in [-1,1]) -> (bytes, ext)."""
    if isinstance(image, (str, os.PathLike)):
        e = ext or Path(image).suffix.lower().lstrip(".")
        if e not in SHARD_IMAGE_EXTENSIONS:
            raise ValueError(f"{str(image)!r}: shards hold .jpg/.png/.webp images; convert it first")
        return Path(image).read_bytes(), e
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), ext or _sniff_ext(bytes(image))
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    if hasattr(image, "save"):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format]
        b = io.BytesIO()
        image.convert("RGB").save(b, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return b.getvalue(), image_format
    raise ValueError(f"an item's 'image' must be a path, bytes, a PIL image or a (3, H, W) tensor, "
                     f"got {type(image).__name__}")


def write_shards(items: Iterable[dict], out_dir: str | os.PathLike, samples_per_shard: int = 1000,
                 prefix: str = "shard", image_format: str = "png") -> list[Path]:
    """Write {"image": ..., "caption": str[, "key": str][, "ext": str]} items to `out_dir/prefix-NNNNNN.tar`.

    Encoded images (paths, bytes) are stored as they are; PIL images and tensors are encoded as
    `image_format` ("png" lossless, "jpg", "webp"). Each shard is written to a temporary name and
    renamed when complete, so an interrupted run leaves no half-written shard. Returns the paths.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if image_format not in ("png", "jpg", "jpeg", "webp"):
        raise ValueError(f"image_format must be 'png', 'jpg' or 'webp', got {image_format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar = tmp = None

    def close():
        tar.close()
        os.replace(tmp, paths[-1])

    def add(name: str, data: bytes):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))

    for n, item in enumerate(items):
        if n % samples_per_shard == 0:
            if tar is not None:
                close()
            paths.append(out / f"{prefix}-{len(paths):06d}.tar")
            tmp = paths[-1].with_name(paths[-1].name + ".tmp")
            tar = tarfile.open(tmp, "w")
        caption = item.get("caption")
        if not isinstance(caption, str):
            raise ValueError(f"item {n} needs a 'caption' string, got {caption!r}")
        key = str(item.get("key", f"{n:09d}"))
        if "." in key or "/" in key:
            raise ValueError(f"item {n}: key {key!r} may not contain '.' or '/' (they split sample names in a tar)")
        data, ext = _encode_image(item["image"], item.get("ext"), image_format)
        add(f"{key}.{ext}", data)
        add(f"{key}.txt", caption.encode("utf-8"))
    if tar is not None:
        close()
    return paths


def folder_to_shards(root: str | os.PathLike, out_dir: str | os.PathLike, samples_per_shard: int = 1000,
                     prefix: str = "shard") -> list[Path]:
    """Convert an imagefolder (see `folders.py`) into shards, copying image bytes without re-encoding."""
    from .folders import scan_folder

    images, captions = scan_folder(root)
    items = [{"image": p, "caption": captions[p]} for p in images if p in captions
             and p.suffix.lower().lstrip(".") in SHARD_IMAGE_EXTENSIONS]
    if not items:
        raise ValueError(f"no captioned .jpg/.png/.webp images in {str(root)!r} to convert")
    return write_shards(items, out_dir, samples_per_shard, prefix)


__all__ = ["ImageCaptionShards", "expand_shards", "write_shards", "folder_to_shards", "distributed_rank_world"]
