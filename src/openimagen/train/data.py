"""Training data for the loop: a deterministic, resumable order sharded by rank; images as a pyramid;
captions as cached embeddings (the text encoder runs once per caption, never per step).

The order is a permutation seeded by (seed, epoch) and the position is (epoch, index), so a checkpoint
needs only that pair to continue the exact same stream after a kill.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..config import to_dict
from .config import TrainConfig

def next_stage(cfg: TrainConfig, done: list[int]) -> int | None:
    """The stage trained next, a pure function of the per-stage step counters (None: finished).

    sequential: the first unfinished stage. interleaved: the unfinished stage with the fewest steps
    done (round robin while all run; the longer ones continue alone). Frozen stages never come up.
    """
    todo = [k for k, s in enumerate(cfg.stages) if done[k] < s.steps and cfg.trains(k)]
    if not todo:
        return None
    return todo[0] if cfg.order == "sequential" else min(todo, key=lambda k: (done[k], k))




class _Memo(torch.utils.data.Dataset):
    """Shapes scenes rendered once per process and kept as uint8 (the same floats come back)."""

    def __init__(self, world):
        self.world, self.images, self._captions = world, {}, None

    def __len__(self) -> int:
        return len(self.world)

    @property
    def captions(self) -> list[str]:
        if self._captions is None:
            self._captions = [self.world.scene_and_caption(i)[1] for i in range(len(self.world))]
        return self._captions

    def __getitem__(self, i: int) -> dict:
        if i not in self.images:
            item = self.world[i]
            self.images[i] = ((item["image"] + 1) * 127.5).round().to(torch.uint8)
        return {"image": self.images[i].float() / 127.5 - 1.0, "caption": self.captions[i]}


def build_dataset(cfg: TrainConfig):
    """The training set at the cascade's largest resolution; bad paths and unreadable data fail here."""
    d, res = cfg.data, max(cfg.resolutions)
    if d.kind == "shapes":
        from ..data.shapes import STANDARD_HOLDOUT, ShapesWorld

        return _Memo(ShapesWorld(resolution=res, size=d.size, seed=d.seed,
                                 holdout=STANDARD_HOLDOUT if d.holdout else None, kind_weights=d.kind_weights,
                                 phrasing=d.phrasing, omit_p=d.omit_p))
    if not d.path:
        raise ValueError(f"data.kind={d.kind!r} needs a path: pass data_path (--data) or set data.path")
    if d.kind == "folder":
        from ..data.folders import ImageCaptionFolder

        return ImageCaptionFolder(d.path, res, hflip=d.hflip, missing_captions=d.missing_captions, verify=True,
                                  seed=d.seed)
    from ..data.webdataset import ImageCaptionShards

    return ImageCaptionShards(d.path, res, hflip=d.hflip, seed=d.seed)


def collect_captions(dataset) -> list[str]:
    if hasattr(dataset, "captions"):
        return list(dataset.captions)
    return _shard_captions(dataset.shards)  # a stream: read only the caption files of every shard, once


def _shard_captions(shards: list[str]) -> list[str]:
    import tarfile

    caps = []
    for path in shards:
        if "://" in path or path.startswith("pipe:"):
            raise ValueError(f"cannot pre-encode captions of remote shard {path!r}; download the shards, or "
                             "precompute embeddings with `openimagen embed` into out_dir/embeddings")
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith((".txt", ".json")):
                    data = tar.extractfile(m).read().decode("utf-8", errors="replace")
                    if m.name.endswith(".txt"):
                        caps.append(data.strip())
                    else:
                        try:
                            meta = json.loads(data)
                        except ValueError:
                            continue
                        cap = next((meta[k] for k in ("caption", "text") if isinstance(meta, dict)
                                    and isinstance(meta.get(k), str)), None)
                        if cap is not None:
                            caps.append(cap.strip())
    if not caps:
        raise ValueError(f"no captions found in the shards {shards[:3]}; each sample needs a .txt or .json caption")
    return caps


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def advance(position: list[int], batch: int, n: int) -> list[int]:
    """Data position (epoch, index into that epoch's permutation) after a global batch of `batch` items."""
    epoch, index = position
    index += batch
    epoch, index = epoch + index // n, index % n
    return [epoch, index]


def _index_plan(cfg: TrainConfig, n: int, position, done, rank: int, world: int):
    """Per future step: this rank's (epoch, index) items and the data position after the step."""
    done, perms = list(done), {}
    while (k := next_stage(cfg, done)) is not None:
        B = cfg.stages[k].batch_size
        items, (epoch, index) = [], position
        for j in range(B):  # a batch may run over into the next epoch's permutation
            e, i = advance([epoch, index], j, n)
            if e not in perms:
                perms = {e: _permutation(n, cfg.seed, e)}
            items.append((e, perms[e][i]))
        position = advance(position, B, n)
        done[k] += 1
        per = B // world
        yield items[rank * per:(rank + 1) * per], position


class _ByEpoch(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        epoch, i = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # folder crops are seeded by (seed, epoch, index)
        item = self.dataset[i]
        return {"image": item["image"], "caption": item["caption"]}


def _collate(items: list[dict]) -> tuple[Tensor, list[str]]:
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def data_batches(cfg: TrainConfig, dataset, position, done, rank: int, world: int):
    """Yields, per step, ([(pyramid {res: (b, 3, res, res)}, captions)] * grad_accum, position after it)."""
    from torch.utils.data import DataLoader, IterableDataset

    from ..data.transforms import image_pyramid

    def split(images: Tensor, captions: list[str]):
        mb = images.shape[0] // cfg.optim.grad_accum
        return [(image_pyramid(images[i:i + mb], cfg.resolutions), captions[i:i + mb])
                for i in range(0, images.shape[0], mb)]

    workers = cfg.data.num_workers
    if not isinstance(dataset, IterableDataset):
        n = len(dataset)
        sampler = (items for items, _ in _index_plan(cfg, n, position, done, rank, world))
        loader = DataLoader(_ByEpoch(dataset), batch_sampler=sampler, num_workers=workers, collate_fn=_collate,
                            persistent_workers=False)
        positions = (pos for _, pos in _index_plan(cfg, n, position, done, rank, world))
        for (images, captions), pos in zip(loader, positions):
            yield split(images, captions), pos
        return
    # A stream (tar shards): the position is (epoch, samples this rank has consumed in that epoch).
    import itertools

    epoch, consumed = position
    sizes = (cfg.stages[k].batch_size // world for k in _stage_sequence(cfg, done))
    want, buf = next(sizes, None), []
    while want is not None:
        dataset.set_epoch(epoch)
        got = 0
        for item in itertools.islice(DataLoader(dataset, batch_size=None, num_workers=workers), consumed, None):
            got, consumed = got + 1, consumed + 1
            buf.append(item)
            if len(buf) == want:  # a batch may span the end of one epoch and the start of the next
                yield split(*_collate(buf)), [epoch, consumed]
                buf, want = [], next(sizes, None)
                if want is None:
                    return
        if got == 0 and consumed == 0:
            raise ValueError(f"the shards {dataset.shards[:3]} hold no readable samples for this process")
        epoch, consumed = epoch + 1, 0


def _stage_sequence(cfg: TrainConfig, done):
    done = list(done)
    while (k := next_stage(cfg, done)) is not None:
        done[k] += 1
        yield k


class EmbeddingLookup:
    """captions -> (embeds (B, L, D), mask (B, L)) from the run's embedding cache; never runs the encoder
    per step. It is also the Cascade's text encoder during training (sample grids, saved model): its
    `spec()` is the real encoder's, so the saved model rebuilds that encoder when loaded."""

    def __init__(self, cache, spec: dict):
        self.cache, self._spec = cache, spec
        self.dim, self.max_length = cache.dim, cache.max_length

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        return self.cache.lookup(captions)

    def encode(self, prompts):
        return self.cache.lookup(list(prompts))

    def spec(self) -> dict:
        return dict(self._spec)

    @classmethod
    def build(cls, cfg: TrainConfig, captions: list[str], folder: Path, acc, progress: bool) -> "EmbeddingLookup":
        from ..data.embeddings import EmbeddingCache

        if acc.is_main_process:
            ensure_embeddings(cfg, captions, folder, device=acc.device, progress=progress)
        acc.wait_for_everyone()
        return cls(EmbeddingCache(folder), to_dict(cfg.text_encoder))


def ensure_embeddings(cfg: TrainConfig, captions: list[str], folder: Path, device="cpu", progress: bool = True) -> Path:
    """Encode the captions not yet in the cache at `folder` (all of them the first time); returns folder."""
    from ..data.embeddings import INDEX, EmbeddingCache, embed_captions
    from ..text import text_encoder_from_spec

    cache = EmbeddingCache(folder) if (folder / INDEX).is_file() else None
    if cache is not None:
        cache.check_encoder(cfg.text_encoder)
    if cache is None or cache.missing(captions):
        encoder = text_encoder_from_spec(cfg.text_encoder, device=device)
        embed_captions(captions, encoder, folder, progress=progress)
    return folder


def embed_dataset(cfg: TrainConfig, out_dir, *, data_path: str | None = None, progress: bool = True) -> Path:
    """`openimagen embed`: encode every caption of the run's data into `out_dir/embeddings` once.

    A later `train(cfg, out_dir)` finds the cache and never loads the text encoder.
    """
    from ..io.disk import check_output_folder
    from .config import with_data_path

    check_output_folder(out_dir)  # before the data is read and the encoder loaded
    cfg = with_data_path(cfg, data_path)
    captions = collect_captions(build_dataset(cfg)) + list(cfg.sample_prompts)
    return ensure_embeddings(cfg, captions, Path(out_dir) / "embeddings", progress=progress)

