"""The text-embedding cache: encode every caption once, train from the stored embeddings.

The text encoder is frozen, so encoding captions inside the training loop recomputes the same
numbers every epoch (with T5-XXL that dominates the step time, imagen-pytorch #317). `embed_captions`
runs the encoder once per unique caption and writes safetensors shards; `EmbeddingCache` serves
`(embeds, mask)` batches from them, memory-mapped and without pickles.

Layout of `out_dir`:
    embeds-000000.safetensors   embeds (T, D) fp16/bf16  all rows' tokens packed end to end
                                mask (T,) bool           the encoder's mask for those tokens
                                offsets (N+1,) int64     row r is tokens offsets[r]:offsets[r+1]
                                keys (N, 16) uint8       blake2b-128 of the caption's UTF-8 bytes
                                (the encoder spec is in the file's metadata, too)
    index.json                  encoder spec, dim, max_length, dtype, count, shard list
Space: each row keeps tokens only up to its last real token (padding is not stored), in 16-bit
floats: fp16 (default; 10-bit mantissa, fine for normalised encoder outputs, overflow above 65504 is
detected) or bf16 (range of fp32, 7-bit mantissa) -- a quarter of a padded fp32 array or less.
The caption -> row map lives in the shards (`keys`), so index.json stays small for millions of captions.

Interruption: shards are written to a temporary name and renamed; index.json is written last.
Running `embed_captions` again on the same folder keeps the finished shards and encodes only
captions not yet stored, so it also adds new captions to an existing cache.

The empty caption "" is always stored: the unconditional branch of guidance is the encoding of "".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from .. import faults
from ..io.disk import disk_full, disk_full_error, save_safetensors

FORMAT = "openimagen.embeddings/1"
INDEX = "index.json"
SHARD_RE = re.compile(r"^embeds-(\d{6})\.safetensors$")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class EmbeddingCacheError(ValueError):
    """The cache cannot serve this request; the message says how to fix it."""


class MissingCaptionError(EmbeddingCacheError):
    pass


class EncoderMismatchError(EmbeddingCacheError):
    pass


def caption_key(caption: str) -> bytes:
    """128-bit blake2b of the caption's UTF-8 bytes: the cache key (collisions are negligible)."""
    return hashlib.blake2b(caption.encode("utf-8"), digest_size=16).digest()


def _canonical(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


def _spec_of(encoder_or_spec) -> dict:
    """The spec of an encoder, of its config (text.py) or a spec dict, in one canonical form: a spec of one
    of our kinds goes through its typed config, so keys left at their defaults compare equal to written ones."""
    from ..config import ConfigError, to_dict
    from ..text import text_encoder_config

    spec = encoder_or_spec
    if hasattr(spec, "spec"):
        spec = spec.spec()
    elif dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = to_dict(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"an encoder spec must be a dict, got {type(spec).__name__}")
    try:
        spec = to_dict(text_encoder_config(spec))
    except ConfigError:
        pass  # another encoder (the TextEncoder protocol is open): its spec is compared as written
    return json.loads(_canonical(spec))


def _spec_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: {a.get(k, '<absent>')!r} vs {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(diffs[:5])


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Writing


def _existing_shards(out: Path, spec: dict) -> list[Path]:
    """Finished shards already in `out` (from an earlier or interrupted run); they must match `spec`."""
    from safetensors import safe_open

    shards = sorted(p for p in out.iterdir() if SHARD_RE.match(p.name))
    for p in shards:
        with safe_open(p, "pt") as f:
            theirs = json.loads((f.metadata() or {}).get("encoder_spec", "null"))
        if not isinstance(theirs, dict) or _spec_of(theirs) != spec:
            raise EncoderMismatchError(
                f"{out} already holds embeddings from another text encoder ({p.name}: "
                f"{_spec_diff(theirs or {}, spec)}); write this cache to a new folder or delete the old one")
    return shards


def _write_shard(path: Path, rows: list[tuple[bytes, Tensor, Tensor]], spec: dict, dtype: str) -> None:
    lengths = torch.tensor([m.shape[0] for _, _, m in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    tensors = {
        "embeds": torch.cat([e for _, e, _ in rows]).contiguous(),                # (T, D)
        "mask": torch.cat([m for _, _, m in rows]).contiguous(),                  # (T,)
        "offsets": offsets,                                                       # (N+1,)
        "keys": torch.frombuffer(bytearray(b"".join(k for k, _, _ in rows)), dtype=torch.uint8).view(-1, 16),
    }
    meta = {"format": FORMAT, "encoder_spec": _canonical(spec), "dtype": dtype}
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors(tensors, tmp, metadata=meta)
    _fsync(tmp)
    faults.point("embeddings.shard", str(tmp))
    os.replace(tmp, path)


def embed_captions(captions: Iterable[str], encoder, out_dir: str | os.PathLike, *, shard_size: int = 16384,
                   batch_size: int = 64, dtype: str = "float16", progress: bool = True) -> "EmbeddingCache":
    """Encode each unique caption (plus "") once with `encoder` and store it under `out_dir`.

    encoder: a TextEncoder (`encode(list[str]) -> (embeds (B,L,D), mask (B,L))`, `dim`, `max_length`, `spec()`).
    shard_size: captions per shard file. batch_size: captions per `encoder.encode` call.
    dtype: storage precision, "float16" (default), "bfloat16" or "float32".
    Captions already in the cache are not encoded again. Returns the opened `EmbeddingCache`.
    """
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    spec = _spec_of(encoder)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob("embeds-*.safetensors.tmp"):  # from an interrupted write
        leftover.unlink()
    shards = _existing_shards(out, spec)
    done = EmbeddingCache._read_keys(shards)

    todo: dict[bytes, str] = {}
    if isinstance(captions, str):
        raise ValueError("captions must be an iterable of strings, not one string; wrap it in a list")
    for c in [""] + list(captions):
        if not isinstance(c, str):
            raise ValueError(f"captions must be strings, got {type(c).__name__}: {c!r}")
        k = caption_key(c)
        if k not in done and k not in todo:
            todo[k] = c
    # Similar lengths in one batch waste less of the encoder's padding.
    order = sorted(todo.items(), key=lambda kv: len(kv[1]))
    next_id = 1 + max((int(SHARD_RE.match(p.name).group(1)) for p in shards), default=-1)
    buf: list[tuple[bytes, Tensor, Tensor]] = []
    flushed = [0]  # rows written by this call

    def flush():
        nonlocal next_id, buf
        path = out / f"embeds-{next_id:06d}.safetensors"
        try:
            _write_shard(path, buf, spec, dtype)
        except OSError as e:
            if not disk_full(e):
                raise
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            per_row = encoder.max_length * encoder.dim * torch.finfo(DTYPES[dtype]).bits // 8  # at most
            raise disk_full_error(out, "the text-embedding cache", per_row * (len(order) - flushed[0]),
                                  "the shards already finished are kept and reused") from None
        flushed[0] += len(buf)
        shards.append(path)
        next_id, buf = next_id + 1, []

    bar = tqdm(total=len(order), unit="caption", desc="embedding captions", disable=not progress)
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        with torch.no_grad():
            emb, mask = encoder.encode([c for _, c in batch])
        emb, mask = emb.detach().float().cpu(), mask.detach().bool().cpu()
        if emb.ndim != 3 or emb.shape[0] != len(batch) or emb.shape[2] != encoder.dim or mask.shape != emb.shape[:2]:
            raise ValueError(f"encoder returned embeds {tuple(emb.shape)} and mask {tuple(mask.shape)} for "
                             f"{len(batch)} captions; expected (B, L, {encoder.dim}) and (B, L)")
        if not torch.isfinite(emb).all():
            raise ValueError("the text encoder produced NaN/inf embeddings; run it in float32 (T5 overflows in fp16)")
        if dtype == "float16" and emb.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError("embeddings exceed the float16 range; pass dtype='bfloat16' (or 'float32')")
        for (k, _), e, m in zip(batch, emb, mask):  # e (L, D), m (L,)
            real = m.nonzero()
            n = max(int(real[-1]) + 1 if len(real) else 0, 1)  # keep up to the last real token
            buf.append((k, e[:n].to(DTYPES[dtype]).clone(), m[:n].clone()))
            if len(buf) >= shard_size:
                flush()
        bar.update(len(batch))
    bar.close()
    if buf:
        flush()

    count = len(done) + len(order)
    index = {"format": FORMAT, "encoder": spec, "dim": int(encoder.dim), "max_length": int(encoder.max_length),
             "dtype": dtype, "count": count, "shards": [p.name for p in shards]}
    faults.point("embeddings.index", str(out / INDEX))
    try:
        _atomic_write_json(out / INDEX, index)
    except OSError as e:
        if not disk_full(e):
            raise
        (out / (INDEX + ".tmp")).unlink(missing_ok=True)
        raise disk_full_error(out, f"the embedding cache's {INDEX}", 4096, "every shard is written and kept") from None
    return EmbeddingCache(out)


# ----------------------------------------------------------------------------------------------
# Reading


class EmbeddingCache:
    """Read side of the cache: `lookup(captions) -> (embeds (B, L, D) float32, mask (B, L) bool)`.

    Shards are memory-mapped on first use; only the requested rows are read. Safe to hand to
    DataLoader workers (open files are not pickled; each process reopens them).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        path = self.root / INDEX
        if not path.is_file():
            hint = ("its shards exist but index.json does not, so the run that wrote them was interrupted; "
                    if self.root.is_dir() and any(SHARD_RE.match(p.name) for p in self.root.iterdir()) else "")
            raise FileNotFoundError(f"no embedding cache at {str(self.root)!r} ({INDEX} missing); {hint}"
                                    "run `openimagen embed` (or embed_captions) to create it")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != FORMAT:
            raise EmbeddingCacheError(f"{path} is not an openimagen embedding cache index (format "
                                      f"{self.index.get('format')!r}, expected {FORMAT!r})")
        self.spec: dict = self.index["encoder"]
        self.dim: int = self.index["dim"]
        self.max_length: int = self.index["max_length"]
        self.shards = [self.root / name for name in self.index["shards"]]
        self._where: dict[bytes, tuple[int, int]] | None = None
        self._offsets: list[list[int]] = []
        self._files: dict[int, object] = {}

    @staticmethod
    def _read_keys(shards: list[Path]) -> dict[bytes, tuple[int, int]]:
        from safetensors import safe_open

        where = {}
        for s, p in enumerate(shards):
            with safe_open(p, "pt") as f:
                keys = f.get_tensor("keys").numpy().tobytes()
            for r in range(len(keys) // 16):
                where[keys[16 * r:16 * r + 16]] = (s, r)
        return where

    def _load_map(self) -> dict[bytes, tuple[int, int]]:
        if self._where is None:
            for p in self.shards:
                if not p.is_file():
                    raise FileNotFoundError(f"embedding shard {str(p)!r} listed in {INDEX} is missing; "
                                            "re-run `openimagen embed` to rebuild it")
            self._where = self._read_keys(self.shards)
            self._offsets = [self._file(s).get_tensor("offsets").tolist() for s in range(len(self.shards))]
        return self._where

    def _file(self, s: int):
        from safetensors import safe_open

        if s not in self._files:
            self._files[s] = safe_open(self.shards[s], "pt")
        return self._files[s]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}  # file handles cannot cross process boundaries; reopened lazily
        return state

    def __len__(self) -> int:
        return int(self.index["count"])

    def __contains__(self, caption: str) -> bool:
        return caption_key(caption) in self._load_map()

    def missing(self, captions: Iterable[str]) -> list[str]:
        """The captions (unique, in order) that the cache does not hold."""
        where = self._load_map()
        return list(dict.fromkeys(c for c in captions if caption_key(c) not in where))

    def check_encoder(self, encoder_or_spec) -> None:
        """Raise `EncoderMismatchError` unless the cache was written by this encoder (an encoder, its config or
        a spec dict)."""
        spec, ours = _spec_of(encoder_or_spec), _spec_of(self.spec)
        if spec != ours:
            raise EncoderMismatchError(
                f"the embedding cache at {str(self.root)!r} was made with a different text encoder than this "
                f"model uses ({_spec_diff(ours, spec)}); re-run `openimagen embed` with the model's "
                "encoder into a new folder")

    def lookup(self, captions: Iterable[str], pad_to: int | None = None) -> tuple[Tensor, Tensor]:
        """Stored (embeds (B, L, D) float32, mask (B, L) bool) for `captions`, zero-padded to a common L.

        L is the longest stored row among them, or `pad_to` (e.g. the encoder's max_length) if given.
        """
        captions = [captions] if isinstance(captions, str) else list(captions)
        where = self._load_map()
        miss = [c for c in captions if caption_key(c) not in where]
        if miss:
            ex = ", ".join(repr(c[:60]) for c in list(dict.fromkeys(miss))[:3])
            raise MissingCaptionError(
                f"{len(miss)} of {len(captions)} captions are not in the embedding cache at {str(self.root)!r} "
                f"(e.g. {ex}); re-run `openimagen embed` over your dataset (only new captions are encoded)")
        rows = []
        for c in captions:
            s, r = where[caption_key(c)]
            a, b = self._offsets[s][r], self._offsets[s][r + 1]
            f = self._file(s)
            rows.append((f.get_slice("embeds")[a:b], f.get_slice("mask")[a:b]))  # (n, D), (n,)
            if not torch.isfinite(rows[-1][0]).all():  # a damaged or hand-made file: never train or sample on it
                raise EmbeddingCacheError(
                    f"embedding shard {str(self.shards[s])!r} holds NaN or inf values (row {r}, caption {c[:60]!r}); "
                    "the file is damaged: delete the cache folder and run `openimagen embed` again")
        L = max((m.shape[0] for _, m in rows), default=0)
        if pad_to is not None:
            if pad_to < L:
                raise ValueError(f"pad_to={pad_to} is shorter than a stored row ({L} tokens)")
            L = pad_to
        embeds = torch.zeros(len(rows), L, self.dim, dtype=torch.float32)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, (e, m) in enumerate(rows):
            embeds[i, : e.shape[0]] = e.float()
            mask[i, : m.shape[0]] = m
        return embeds, mask

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.root)!r}, {len(self)} captions, dim={self.dim})"


__all__ = ["embed_captions", "EmbeddingCache", "caption_key", "EmbeddingCacheError", "MissingCaptionError",
           "EncoderMismatchError"]
