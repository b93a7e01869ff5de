"""Train every stage of a cascade in one process and one command: `train(cfg, out_dir)`.

One step of stage k (Imagen, Saharia et al. 2022, §2; Ho et al. 2021 for the cascade):
    x0      the batch at stage k's resolution; lowres = antialiased downsample to stage k-1's
    t, eps  t ~ schedule.sample_t, eps ~ N(0, I);  x_t = alpha_t x0 + sigma_t eps
    text    cached embeddings of the captions; each caption is "" with prob. caption_dropout
    SR      lowres upsampled (as at sampling) and noised to a random aug level per sample
    loss    diffusion_loss(unet(x_t, ...), x0, eps, t), optionally min-SNR-gamma weighted
then clip, AdamW, EMA. Stage order: "sequential" or "interleaved" (see `next_stage`).

Exact resume: everything random in a step comes from a generator seeded by (seed, rank, step) and
the data order is a permutation seeded by (seed, epoch), so a checkpoint holds only counters, the
data position, weights, EMA and optimizer state; a run killed anywhere and resumed ends with the
weights of a run never killed. Files written under out_dir:
    train_config.json  log.jsonl  embeddings/  samples/step-*.png  checkpoints/
    model/   the EMA cascade: Cascade.from_pretrained(out_dir / "model")
The same code runs under `accelerate launch` / torchrun: each rank takes its slice of every global
batch; only the main process writes files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import save_json, to_dict
from ..diffusion import diffusion_loss
from ..pipeline import Cascade, Stage
from . import checkpoint as ckpt
from .config import TrainConfig, validate_unets, with_max_steps
from .ema import EMA

log = logging.getLogger("openimagen.train")


# ----------------------------------------------------------------------------------------------
# schedule of work: which stage, which learning rate, which random numbers


def next_stage(cfg: TrainConfig, done: list[int]) -> int | None:
    """The stage trained next, a pure function of the per-stage step counters (None: finished).

    sequential: the first unfinished stage. interleaved: the unfinished stage with the fewest steps
    done (round robin while all run; the longer ones continue alone).
    """
    todo = [k for k, s in enumerate(cfg.stages) if done[k] < s.steps]
    if not todo:
        return None
    return todo[0] if cfg.order == "sequential" else min(todo, key=lambda k: (done[k], k))


def learning_rate(cfg: TrainConfig, k: int, step: int) -> float:
    """Stage k's lr for its optimiser step `step` (0-based): linear warm-up, then constant or cosine to 10%."""
    o, st = cfg.optim, cfg.stages[k]
    base = st.lr if st.lr is not None else o.lr
    if step < o.warmup_steps:
        return base * (step + 1) / o.warmup_steps
    if o.decay == "cosine":
        span = max(1, st.steps - o.warmup_steps)
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span))))
    return base


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator private to one (seed, rank, global step): nothing random needs saving."""
    digest = hashlib.blake2b(f"openimagen-train/{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _rand(shape, g: torch.Generator, device, normal: bool = False) -> Tensor:
    # Drawn on the CPU generator, then moved: the same numbers on every device.
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=g, dtype=torch.float32).to(device)


# ----------------------------------------------------------------------------------------------
# one optimisation step's loss for one stage


def stage_loss(cfg: TrainConfig, k: int, model, stage: Stage, images: dict[int, Tensor], captions: list[str],
               lookup, g: torch.Generator) -> Tensor:
    """The diffusion loss of stage k on one micro-batch. images: {resolution: (B, 3, R, R) in [-1, 1]}."""
    st, sc = cfg.stages[k], stage.config
    x0 = images[sc.resolution]  # (B, 3, R, R)
    B, device = x0.shape[0], x0.device
    low = images[cfg.stages[k - 1].stage.resolution] if sc.lowres else None  # (B, 3, r, r)
    if st.crop is not None:  # random aligned patches of the target and of its low-res version
        x0, low = _crop_pair(x0, low, st.crop, g)

    t = stage.schedule.sample_t(B, generator=g).to(device)  # (B,) schedule units
    eps = _rand(x0.shape, g, device, normal=True)
    alpha, sigma = stage.schedule.alpha_sigma(t)
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps

    drop = _rand((B,), g, "cpu") < cfg.caption_dropout
    embeds, mask = lookup(["" if d else c for c, d in zip(captions, drop.tolist())])
    embeds, mask = embeds.to(device), mask.to(device)  # (B, L, D), (B, L)

    lowres = lowres_t = None
    if sc.lowres:
        # Noise-conditioning augmentation (Ho et al. 2021, §4.1), per sample; the same upsampling as
        # Stage.augment_lowres uses at sampling time, so train and test inputs match.
        size = x0.shape[-1]
        up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        sched = stage.lowres_schedule
        if st.lowres_aug_max is None:
            aug_t = sched.sample_t(B, generator=g).to(device)
        else:
            u = _rand((B,), g, device)
            aug_t = (u * (st.lowres_aug_max + 1)).floor().clamp(max=st.lowres_aug_max) if sched.config.discrete \
                else u * st.lowres_aug_max
        a, s = sched.alpha_sigma(aug_t)
        lowres = a.view(-1, 1, 1, 1) * up + s.view(-1, 1, 1, 1) * _rand(up.shape, g, device, normal=True)
        lowres_t = sched.model_time(aug_t)

    out = model(x_t, stage.schedule.model_time(t), embeds, mask, lowres=lowres, lowres_t=lowres_t)
    return diffusion_loss(out.float(), x0, eps, t, stage.schedule, stage.parameterization, st.min_snr_gamma)


def _crop_pair(hi: Tensor, low: Tensor, crop: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    R, r = hi.shape[-1], low.shape[-1]
    s = R // r
    if s * r != R or crop % s:
        raise ValueError(f"crop={crop} needs an integer scale between {r} and {R} px that divides the crop")
    n = (R - crop) // s + 1  # aligned offsets, in low-res pixels
    oy, ox = (torch.randint(0, n, (hi.shape[0],), generator=g).tolist() for _ in range(2))
    c = crop // s
    hs = torch.stack([hi[i, :, y * s:y * s + crop, x * s:x * s + crop] for i, (y, x) in enumerate(zip(oy, ox))])
    ls = torch.stack([low[i, :, y:y + c, x:x + c] for i, (y, x) in enumerate(zip(oy, ox))])
    return hs, ls


# ----------------------------------------------------------------------------------------------
# data: a deterministic order, sharded by rank; images as a pyramid; captions as cached embeddings


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
                                 holdout=STANDARD_HOLDOUT if d.holdout else None))
    if not d.path:
        raise ValueError(f"data.kind={d.kind!r} needs a path: pass data_path (--data) or set data.path")
    if d.kind == "folder":
        from ..data.folders import ImageCaptionFolder

        return ImageCaptionFolder(d.path, res, hflip=d.hflip, missing_captions=d.missing_captions, verify=True,
                                  seed=d.seed)
    from ..data.webdataset import ImageCaptionShards

    return ImageCaptionShards(d.path, res, hflip=d.hflip, seed=d.seed)


def _guess_data_kind(path: str) -> str:
    """A data path given to a shapes-world config: tar shards -> "webdataset", anything else -> "folder"."""
    p = Path(path)
    if path.endswith(".tar") or "://" in path or path.startswith("pipe:") or any(c in path for c in "{*?["):
        return "webdataset"
    if p.is_dir() and any(p.glob("*.tar")) and not any(f.is_dir() or f.suffix.lower() != ".tar"
                                                        for f in p.iterdir() if not f.name.startswith(".")):
        return "webdataset"
    return "folder"


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
        from ..data.embeddings import INDEX, EmbeddingCache, embed_captions
        from ..text import text_encoder_from_spec

        spec = _full_spec(cfg.text_encoder)
        if acc.is_main_process:
            cache = EmbeddingCache(folder) if (folder / INDEX).is_file() else None
            if cache is not None:
                cache.check_encoder(spec)
            if cache is None or cache.missing(captions):
                encoder = text_encoder_from_spec(spec, device=acc.device)
                embed_captions(captions, encoder, folder, progress=progress)
                del encoder
        acc.wait_for_everyone()
        return cls(EmbeddingCache(folder), spec)


def _full_spec(spec: dict) -> dict:
    """The encoder's own `spec()` for a config entry (defaults filled in), without loading it."""
    if spec["kind"] == "minilm":
        return {"kind": "minilm", "max_length": spec.get("max_length", 32)}
    return {"kind": "t5", "name_or_path": spec["name_or_path"], "max_length": spec.get("max_length", 77),
            "if_style": spec.get("if_style", False)}


# ----------------------------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig, out_dir, *, resume: bool = False, max_steps: int | None = None,
          data_path: str | None = None, progress: bool = True) -> Path:
    """Train every stage of `cfg`; returns `out_dir/model` (the EMA cascade, for `Cascade.from_pretrained`).

    resume: continue from the newest complete checkpoint in out_dir (start afresh if there is none).
    max_steps: cap every stage's steps (a smoke run still trains the whole cascade).
    data_path: overrides cfg.data.path; with a shapes-world config it switches to "webdataset" for
        tar shards and to "folder" for anything else.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm

    # -- everything that can be wrong with the input fails here, before any work --------------
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig (see load_train_config), got {type(cfg).__name__}")
    cfg = with_max_steps(cfg, max_steps)
    if data_path is not None:
        kind = cfg.data.kind if cfg.data.kind != "shapes" else _guess_data_kind(str(data_path))
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, kind=kind, path=str(data_path)))
    validate_unets(cfg)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a GPU; use 'bf16' on the CPU (or 'no')")
    out, root = Path(out_dir), Path(out_dir) / "checkpoints"
    found = ckpt.find_checkpoint(root)
    if found is not None and not resume:
        raise ValueError(f"{out} already holds a training run (checkpoint {found.name}); pass resume=True "
                         "(--resume) to continue it, or choose a new output folder")
    dataset = build_dataset(cfg)

    if AcceleratorState._shared_state and AcceleratorState().num_processes == 1:
        AcceleratorState._reset_state()  # a second train() in one process may pick another precision
    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    for i, st in enumerate(cfg.stages):
        if st.batch_size % (world * cfg.optim.grad_accum):
            raise ValueError(f"stages.{i}.batch_size={st.batch_size} is not divisible by processes x grad_accum "
                             f"= {world} x {cfg.optim.grad_accum}; make the global batch a multiple of it")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(to_dict(cfg), out / "train_config.json")

    # -- text: every caption encoded once, into out_dir/embeddings ----------------------------
    lookup = EmbeddingLookup.build(cfg, collect_captions(dataset) + list(cfg.sample_prompts),
                                   out / "embeddings", acc, progress and main)

    # -- models, optimisers, EMA, and the state of a resumed run --------------------------------
    torch.manual_seed(cfg.seed)  # identical initial weights in every process and every run
    stages = [Stage(st.stage).to(acc.device) for st in cfg.stages]
    emas = [EMA(s.unet, cfg.ema_decay, cfg.ema_warmup) for s in stages]  # copied before accelerate wraps
    opts = [torch.optim.AdamW(s.unet.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                              eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay) for s in stages]
    done, step, position, scaler_state = [0] * len(stages), 0, [0, 0], None
    if found is not None:
        state, saved = _load_matching(found, cfg, stages, opts, emas)
        step, done = state["step"], list(state["stage_steps"])
        positions = state["data_positions"]
        position = positions[rank] if rank < len(positions) else positions[0]
        scaler_state = state.get("scaler")
        if state.get("config") != to_dict(cfg):
            log.warning("the config differs from the one %s was written with; resuming anyway", found)
        log.info("resuming from %s (step %d)", found, step)
    if main:
        _truncate_log(out / "log.jsonl", step)
    models, opts = _prepare(acc, [s.unet for s in stages], opts)
    if scaler_state is not None and acc.scaler is not None:
        acc.scaler.load_state_dict(scaler_state)

    def save() -> None:
        positions = acc.gather(torch.tensor([position], device=acc.device)).view(-1, 2).tolist()
        if main:
            state = {"step": step, "stage_steps": done, "data_positions": positions,
                     "ema_updates": [e.num_updates for e in emas], "config": to_dict(cfg),
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
            per_stage = [{"model": acc.unwrap_model(m).state_dict(), "ema": e.state_dict(), "optim": o.state_dict()}
                         for m, e, o in zip(models, emas, opts)]
            ckpt.save_checkpoint(root, step, state, per_stage, cfg.keep_checkpoints)
            ckpt.publish_model(_ema_cascade(cfg, emas, lookup), out)
        acc.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------
    batches = data_batches(cfg, dataset, position, done, rank, world)
    bar = tqdm(total=sum(st.steps for st in cfg.stages), initial=step, desc="training",
               disable=not (progress and main), dynamic_ncols=True)
    window: dict[int, list[Tensor]] = {}
    t0 = time.time()
    while (k := next_stage(cfg, done)) is not None:
        model, opt = models[k], opts[k]
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, k, done[k])
        g = step_generator(cfg.seed, rank, step)
        torch.manual_seed(g.initial_seed())  # dropout inside the U-Net, if any, replays too
        micro_batches, position = next(batches)  # this rank's share of the global batch
        model.train()
        step_loss = torch.zeros((), device=acc.device)
        for m, (images, captions) in enumerate(micro_batches):
            images = {r: x.to(acc.device, non_blocking=True) for r, x in images.items()}
            last = m == len(micro_batches) - 1
            with (_null() if last else acc.no_sync(model)), acc.autocast():
                loss = stage_loss(cfg, k, model, stages[k], images, captions, lookup, g) / len(micro_batches)
                acc.backward(loss)
            step_loss += loss.detach()
        if cfg.optim.grad_clip is not None:
            acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        emas[k].update(acc.unwrap_model(model))
        done[k] += 1
        step += 1
        window.setdefault(k, []).append(step_loss)
        bar.update(1)

        finished = next_stage(cfg, done) is None
        if step % cfg.log_every == 0 or finished:
            _log_window(cfg, acc, out / "log.jsonl", window, step, done, time.time() - t0, bar)
        if step % cfg.checkpoint_every == 0 or finished:
            save()
        if main and ((cfg.sample_every and step % cfg.sample_every == 0) or finished):
            _sample_grid(cfg, emas, lookup, done, out / "samples" / f"step-{step:07d}.png")
    bar.close()

    if main and not (out / "model" / "cascade.json").is_file():  # resumed a run that had already finished
        ckpt.publish_model(_ema_cascade(cfg, emas, lookup), out)
    acc.wait_for_everyone()
    return out / "model"


# ----------------------------------------------------------------------------------------------
# helpers of the run


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _load_matching(found: Path, cfg: TrainConfig, stages: list[Stage], opts: list, emas: list[EMA]):
    """Load a checkpoint into the freshly built stages, or say in one line why it does not fit."""
    fix = f"resume with the config it was written with ({found.parent.parent / 'train_config.json'})"
    n_saved = len(ckpt._readable(found).get("stage_steps", []))
    if n_saved != len(stages):
        raise ValueError(f"checkpoint {found} has {n_saved} stages but the config has {len(stages)}; {fix}")
    state, saved = ckpt.load_checkpoint(found, len(stages))
    for k, (s, o, e, sv, n) in enumerate(zip(stages, opts, emas, saved, state["ema_updates"])):
        try:
            s.unet.load_state_dict(sv["model"])
            o.load_state_dict(sv["optim"])
            e.load_state_dict(sv["ema"], n)
        except (RuntimeError, ValueError, KeyError) as err:
            why = str(err).strip().splitlines()[0][:300]
            raise ValueError(f"checkpoint {found} does not fit stage {k} of this config ({why}); {fix}") from None
    return state, saved


def _prepare(acc, unets: list, opts: list) -> tuple[list, list]:
    prepared = acc.prepare(*unets, *opts)
    if not isinstance(prepared, (list, tuple)):
        prepared = [prepared]
    n = len(unets)
    return list(prepared[:n]), list(prepared[n:])


def _ema_cascade(cfg: TrainConfig, emas: list[EMA], lookup) -> Cascade:
    return Cascade(lookup, [Stage(st.stage, e.model) for st, e in zip(cfg.stages, emas)])


def _log_window(cfg, acc, path: Path, window: dict, step: int, done: list[int], elapsed: float, bar) -> None:
    """One JSONL line per stage trained since the last line: the mean loss over its steps (all ranks)."""
    lines = []
    for k in sorted(window):
        mean = acc.reduce(torch.stack(window[k]).mean(), reduction="mean").item()
        lines.append({"step": step, "stage": k, "stage_step": done[k], "loss": mean, "steps": len(window[k]),
                      "lr": learning_rate(cfg, k, done[k] - 1), "elapsed_s": round(elapsed, 3)})
        bar.set_postfix(stage=k, loss=f"{mean:.4f}")
    window.clear()
    if acc.is_main_process:
        with open(path, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    ckpt.atomic_write_text(path, "".join(line + "\n" for line in keep))


@torch.no_grad()
def _sample_grid(cfg: TrainConfig, emas: list[EMA], lookup, done: list[int], path: Path) -> None:
    """A PNG: one row per sample prompt, one column per stage trained so far (upscaled to the last size)."""
    from PIL import Image

    from ..pipeline import to_pil

    n = 1
    while n < len(done) and done[n] > 0:  # later stages that have not trained yet would only draw noise
        n += 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    result = _ema_cascade(cfg, emas, lookup).generate(list(cfg.sample_prompts), steps=cfg.sample_steps,
                                                      seed=cfg.seed, stop_at=n, progress=False,
                                                      autocast_dtype=dtype)
    R = result.images[-1].shape[-1]
    cols = [to_pil(F.interpolate(x.float(), size=(R, R), mode="nearest")) for x in result.images]
    grid = Image.new("RGB", (R * len(cols), R * len(cfg.sample_prompts)))
    for c, column in enumerate(cols):
        for r, img in enumerate(column):
            grid.paste(img, (c * R, r * R))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
