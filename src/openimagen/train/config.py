"""What a training run is: frozen dataclasses, with every default in one place.

A `TrainConfig` describes the whole cascade run (every stage trains in the same process, in one
command): the text encoder, one `StageTrainConfig` per stage (the `stage.StageConfig` that is
saved with the model, plus how long / how big to train it), the data, the optimiser and the
bookkeeping (EMA, samples, checkpoints, logs). How a preset + a file + `--set` overrides become one
is train/overrides.py (`load_train_config`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import ConfigError, rename_legacy
from ..lora import LoraConfig
from ..stage import StageConfig
from ..text import MiniLMEncoderConfig, SpelledEncoderConfig, T5EncoderConfig

DATA_KINDS = ("shapes", "folder", "webdataset")
PRECISIONS = ("auto", "no", "bf16", "fp16")
ORDERS = ("sequential", "interleaved")
# The encoders a run can train with: precomputed embeddings have no encoder to embed new captions.
TRAIN_TEXT_ENCODERS = (MiniLMEncoderConfig, T5EncoderConfig, SpelledEncoderConfig)


@dataclass(frozen=True)
class StageTrainConfig:
    stage: StageConfig                  # architecture, schedules, sampling defaults: saved with the model
    steps: int = 1000                   # optimiser steps for this stage
    batch_size: int = 16                # global batch per optimiser step (split over processes and accumulation)
    lr: float | None = None             # None: optim.lr
    min_snr_gamma: float | None = 5.0   # Min-SNR-gamma loss weights (Hang et al. 2023); None: plain MSE
    noise_level_max: float | None = None  # SR: train levels ~ U(0, max) in lowres_schedule units; None: its sample_t
    crop: int | None = None             # SR: train on random crop x crop patches of the stage resolution
    extras_loss: float = 1.0            # weight of the U-Net extras' auxiliary losses (nn/extras.py)
    extras_warmup: int = 0              # the first N of `steps` train only the U-Net's extras, on those losses (cheap)
    LEGACY: ClassVar[dict[str, str]] = {"lowres_aug_max": "noise_level_max", "layout_loss": "extras_loss",
                                        "layout_warmup": "extras_warmup"}  # retired keys -> their names now

    @classmethod
    def upgrade_json(cls, data: dict) -> dict:
        return rename_legacy(data, cls.LEGACY, "StageTrainConfig")  # train_config.json of older versions

    def __post_init__(self):
        _positive_int(self.steps, "stages.N.steps")
        extras = [e.kind for e in self.stage.extras]
        _positive_int(self.batch_size, "stages.N.batch_size")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} must be positive (or null to use optim.lr)")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ConfigError(f"min_snr_gamma={self.min_snr_gamma!r} must be positive, or null for plain MSE")
        if self.crop is not None:
            _positive_int(self.crop, "crop")
            if self.crop > self.stage.resolution:
                raise ConfigError(f"crop={self.crop} is larger than the stage resolution {self.stage.resolution}")
            if not self.stage.lowres:
                raise ConfigError("crop is for super-resolution stages only; the base stage sees whole images")
            if extras:  # the text layout's loss scores the layout of the whole image
                raise ConfigError(f"a U-Net with extras {extras} sees whole images; it cannot train on crops: "
                                  f"drop crop or the extras")
        if not (isinstance(self.extras_loss, (int, float)) and self.extras_loss >= 0):
            raise ConfigError(f"extras_loss={self.extras_loss!r} must be a number >= 0")
        if not isinstance(self.extras_warmup, int) or not 0 <= self.extras_warmup < self.steps:
            raise ConfigError(f"extras_warmup={self.extras_warmup!r} must be an int in [0, steps={self.steps})")
        if self.extras_warmup and not (extras and self.extras_loss):
            raise ConfigError('extras_warmup trains the U-Net\'s extras alone on their losses: it needs unet.extras '
                              '(e.g. [{"kind": "layout", "grid": 8}]) and extras_loss > 0')


@dataclass(frozen=True)
class DataConfig:
    kind: str = "shapes"                # "shapes" | "folder" | "webdataset"
    path: str | None = None             # folder / shard spec (the CLI's --data overrides it)
    size: int = 10_000                  # shapes: number of scenes in the training set
    seed: int = 0                       # shapes: which scenes; folder/webdataset: crop randomness
    holdout: bool = True                # shapes: never train on STANDARD_HOLDOUT combinations (for evaluation)
    kind_weights: dict | None = None    # shapes: relative frequency of scene kinds; None = shapes.KIND_WEIGHTS
    phrasing: str = "templates"         # shapes: "templates" | "natural" (captions as people write them, data/shapes_phrasings.py)
    omit_p: float | None = None         # shapes, natural: share of optional attributes captions leave out (None: OMIT_P)
    missing_captions: str = "error"     # folder: "error" | "skip" | "empty"
    hflip: bool = False                 # flips turn "a red square left of a circle" into a lie
    num_workers: int = 0                # DataLoader worker processes

    def __post_init__(self):
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data.kind={self.kind!r} is unknown; choose one of {list(DATA_KINDS)}")
        _positive_int(self.size, "data.size")
        if self.kind_weights is not None:
            from ..data.shapes import check_kind_weights
            try:
                check_kind_weights(self.kind_weights)
            except ValueError as e:
                raise ConfigError(f"data.kind_weights: {e}") from None
        if self.phrasing not in ("templates", "natural"):
            raise ConfigError(f"data.phrasing={self.phrasing!r}; choose 'templates' or 'natural'")
        if self.omit_p is not None and (self.phrasing != "natural" or not 0 <= self.omit_p <= 1):
            raise ConfigError(f"data.omit_p={self.omit_p!r} needs data.phrasing='natural' and a value in [0, 1]")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.missing_captions not in ("error", "skip", "empty"):
            raise ConfigError(f"data.missing_captions={self.missing_captions!r}; choose 'error', 'skip' or 'empty'")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100             # linear warm-up per stage
    decay: str = "constant"             # after warm-up: "constant" | "cosine" (to 10% at the stage's last step)
    grad_clip: float | None = 1.0       # max global grad norm; None: no clipping
    grad_accum: int = 1                 # micro-batches per optimiser step

    def __post_init__(self):
        if not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr!r} must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas!r} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay not in ("constant", "cosine"):
            raise ConfigError(f"optim.decay={self.decay!r}; choose 'constant' or 'cosine'")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip={self.grad_clip!r} must be positive or null")
        _positive_int(self.grad_accum, "optim.grad_accum")


@dataclass(frozen=True)
class PriorConfig:
    """Prior preservation (DreamBooth, Ruiz et al. 2023): images the starting model draws for these prompts
    (cycled), generated once into out_dir/prior/ and mixed into the training data, so the model keeps them."""
    prompts: tuple[str, ...]
    num_images: int = 64
    seed: int = 0
    steps: int | None = None            # sampling steps per stage (None: the model's own defaults)

    def __post_init__(self):
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ConfigError(f"init.prior.prompts={self.prompts!r} must be non-empty prompts (the class to preserve)")
        _positive_int(self.num_images, "init.prior.num_images")


@dataclass(frozen=True)
class InitConfig:
    """Fine-tuning: start from a trained model instead of random weights (train/finetune.py)."""
    model: str                          # what `generate --model` takes: "bundled", a folder, a run, an IF folder / hub id
    sr: str | None = None               # an IF stage II after an IF stage I `model`
    train: tuple[int, ...] | None = None  # the stages that train (the others stay frozen, never run); None: all
    lora: LoraConfig | None = None      # train LoRA adapters only (None: every weight of the trained stages)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (IF U-Nets)
    merge: bool = False                 # LoRA: also publish out_dir/model with the adapters merged in
    caption: str | None = None          # every training image gets this caption ("a photo of sks dog")
    prior: PriorConfig | None = None    # prior preservation: the starting model's own images, mixed in
    replay: str | None = None           # a folder of images + captions of the data to keep (e.g. some of the
                                        # original training set), mixed in as they are: on the bundled model it
                                        # kept every attribute where drawn prior images did not (docs/decisions.md#replay)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"init.model={self.model!r} must name a model (\"bundled\", a folder or an IF hub id)")
        if self.train is not None and (not self.train or any(isinstance(k, bool) or not isinstance(k, int) or k < 0
                                                             for k in self.train)):
            raise ConfigError(f"init.train={self.train!r} must be a non-empty list of stage indices (0 = the base)")
        if self.merge and self.lora is None:
            raise ConfigError("init.merge merges LoRA adapters; it needs init.lora")
        if self.replay is not None and (not isinstance(self.replay, str) or not self.replay):
            raise ConfigError(f"init.replay={self.replay!r} must be a folder of images with captions")


@dataclass(frozen=True)
class TrainConfig:
    stages: tuple[StageTrainConfig, ...]
    text_encoder: MiniLMEncoderConfig | T5EncoderConfig | SpelledEncoderConfig = field(default_factory=MiniLMEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixed_precision: str = "auto"       # "auto" (bf16 where native, else fp16 on CUDA, else "no": precision.py)
                                        # | "no" | "bf16" (CPU and GPU) | "fp16" (GPU only)
    compile: bool = False               # torch.compile each U-Net (inductor; on the CPU needs g++/clang++): compiling.py
    ema_decay: float = 0.999
    ema_warmup: bool = True             # effective decay min(decay, (1+n)/(10+n)): short runs get a useful EMA
    caption_dropout: float = 0.1        # trains the unconditional branch (the embedding of "")
    order: str = "sequential"           # "sequential": stage 0 to the end, then 1, ... | "interleaved": round robin
    seed: int = 0
    log_every: int = 10                 # one JSONL line (mean loss of the window) every N steps
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0               # 0: a sample grid only at the end
    sample_prompts: tuple[str, ...] = ("a red circle on a gray background", "a blue square above a yellow star")
    sample_steps: int = 25              # sampler steps per stage for the grids
    init: InitConfig | None = None      # fine-tune a trained model (train/finetune.py); None: random weights
    train_stages: tuple[int, ...] | None = None  # a fresh cascade's stages this run trains (None: all). Stages
                                        # train independently (each on real images), so a cascade can be split
                                        # over processes or machines and joined by `openimagen merge-stages`

    def __post_init__(self):
        if not self.stages:
            raise ConfigError("stages is empty: a cascade needs at least one stage")
        for i, s in enumerate(self.stages):
            if s.stage.lowres != (i > 0):
                raise ConfigError(f"stages.{i}.stage.lowres must be {i > 0} (stage 0 is the base, the rest super-resolve)")
            if i and s.stage.resolution <= self.stages[i - 1].stage.resolution:
                raise ConfigError(f"stage {i} resolution {s.stage.resolution} must exceed stage {i - 1}'s")
        if not isinstance(self.text_encoder, TRAIN_TEXT_ENCODERS):
            raise ConfigError(f"text_encoder must be one of {[c.__name__ for c in TRAIN_TEXT_ENCODERS]} (kinds "
                              f"{[c.kind for c in TRAIN_TEXT_ENCODERS]}), got {self.text_encoder!r}")
        for i, s in enumerate(self.stages):   # a spelling extra reads letter tokens only a spelled encoder writes
            for e in s.stage.extras:
                want = getattr(e, "max_chars", None) if getattr(e, "reads", "text") == "letters" else None
                have = getattr(self.text_encoder, "max_chars", None)
                if want is not None and want != have:
                    raise ConfigError(f"stages.{i} has a spelling extra of max_chars={want}, so text_encoder must be "
                                      f'{{"kind": "spelled", "max_chars": {want}, "base": ...}}; got {self.text_encoder!r}')
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}; choose one of {list(PRECISIONS)}")
        if self.order not in ORDERS:
            raise ConfigError(f"order={self.order!r}; choose one of {list(ORDERS)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"caption_dropout={self.caption_dropout} must be in [0, 1)")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "sample_steps"):
            _positive_int(getattr(self, name), name)
        if self.sample_every < 0:
            raise ConfigError(f"sample_every={self.sample_every} must be >= 0 (0: only at the end)")
        if self.init is not None and self.init.train is not None:
            bad = [k for k in self.init.train if k >= len(self.stages)]
            if bad:
                raise ConfigError(f"init.train names stage(s) {bad}, but the model has {len(self.stages)} "
                                  f"(0..{len(self.stages) - 1})")
        if self.train_stages is not None:
            if self.init is not None:
                raise ConfigError("train_stages splits a fresh cascade over runs; a fine-tune names its stages in "
                                  "init.train (--train-stages with --init)")
            ks = self.train_stages
            if (not isinstance(ks, tuple) or not ks or len(set(ks)) != len(ks)
                    or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.stages) for k in ks)):
                raise ConfigError(f"train_stages={ks!r} must list distinct stage indices in 0..{len(self.stages) - 1} "
                                  "(0 = the base), e.g. [0] or [1, 2]")

    def trains(self, k: int) -> bool:
        """Whether stage k trains in this run (a fine-tune may freeze some, a split run leaves some to another
        process: they never run)."""
        if self.train_stages is not None and k not in self.train_stages:
            return False
        return self.init is None or self.init.train is None or k in self.init.train

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(s.stage.resolution for s in self.stages)


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def with_max_steps(cfg: TrainConfig, max_steps: int | None) -> TrainConfig:
    """Cap every stage's steps at `max_steps` (smoke runs: every stage still gets trained)."""
    if max_steps is None:
        return cfg
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r} must be a positive integer (or None for the config's steps)")
    return dataclasses.replace(cfg, stages=tuple(_capped(s, max_steps) for s in cfg.stages))


def _capped(st: StageTrainConfig, max_steps: int) -> StageTrainConfig:
    """A stage cut to `max_steps`, its extras' warm-up scaled by the same factor (the same share of the run),
    so a smoke run of any preset works: shapes-small's 3000 of 9000 becomes 16 of 50."""
    if st.steps <= max_steps:
        return st
    warmup = st.extras_warmup * max_steps // st.steps
    if warmup != st.extras_warmup:
        import logging

        logging.getLogger("openimagen.train").info("--max-steps %d: extras_warmup scaled from %d to %d",
                                                   max_steps, st.extras_warmup, warmup)
    return dataclasses.replace(st, steps=max_steps, extras_warmup=warmup)


def with_data_path(cfg: TrainConfig, data_path: str | None) -> TrainConfig:
    """Point the run at `data_path` (the CLI's --data); a shapes-world config switches to the path's kind."""
    if data_path is None:
        return cfg
    kind = cfg.data.kind if cfg.data.kind != "shapes" else guess_data_kind(str(data_path))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, kind=kind, path=str(data_path)))


def guess_data_kind(path: str) -> str:
    """A data path given to a shapes-world config: tar shards -> "webdataset", anything else -> "folder"."""
    p = Path(path)
    if path.endswith(".tar") or "://" in path or path.startswith("pipe:") or any(c in path for c in "{*?["):
        return "webdataset"
    if p.is_dir() and any(p.glob("*.tar")) and not any(f.is_dir() or f.suffix.lower() != ".tar"
                                                        for f in p.iterdir() if not f.name.startswith(".")):
        return "webdataset"
    return "folder"


def validate_unets(cfg: TrainConfig) -> None:
    """Nothing left to do: every U-Net config is a typed, validated dataclass once its StageConfig exists.
    Kept so that callers written before the configs were typed still run."""
