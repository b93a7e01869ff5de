"""Fine-tuning: a training run that starts from a trained model (`TrainConfig.init`, `train --init MODEL`).

    cfg = finetune_config(InitConfig("bundled", train=(0,), lora=LoraConfig(rank=4)), overrides=[...])
    train(cfg, "runs/teal")        # -> runs/teal/adapters/stage_0/{adapter_model.safetensors, adapter_config.json}

What comes from the model: every stage's StageConfig (its schedule, parameterisation, low-res
conditioning and sampling defaults: an IF stage trains with eps + learned-range variance on its own
discrete schedule, and stage II on its own bilinear upsampling and noise schedule, through the same
`Stage.unet_inputs` and `LowresConditioning` as sampling) and the text encoder. What the config adds:
how long and how big to train (a preset or file with the same stages, or `default_recipe`).
Stages not in `init.train` are frozen: no optimiser, no EMA, nothing in checkpoints, never run.
With `init.lora` the trained stages get peft adapters (lora.py) and only those train, are averaged
and checkpointed; the run publishes them as `out_dir/adapters/stage_K/`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch

from ..config import load_json, to_dict
from ..stage import Stage, StageConfig
from ..text import T5EncoderConfig, text_encoder_config
from .config import InitConfig, TrainConfig

log = logging.getLogger("openimagen.train")


# ----------------------------------------------------------------------------------------------
# the starting model


def _our_folder(model: str) -> Path | None:
    from ..load import bundled_model_path

    if model == "bundled":
        return bundled_model_path()
    p = Path(model)
    if (p / "cascade.json").is_file():
        return p
    if (p / "model" / "cascade.json").is_file():  # a run folder
        return p / "model"
    return None


def load_init(init: InitConfig, device="cpu") -> tuple:
    """(text encoder config, [Stage]) of the starting model; the text encoder itself is not loaded."""
    from ..io import model_folder

    folder = _our_folder(init.model)
    if folder is not None:
        if init.sr is not None:
            raise ValueError("init.sr (--init-sr) is for DeepFloyd IF stage II; an openimagen model holds its SR stages")
        spec = load_json(folder / "cascade.json").get("text_encoder")
        _, stages = model_folder.load(folder, text_encoder=_NO_ENCODER, device=device)
        return text_encoder_config(spec), stages
    from ..checkpoints.deepfloyd_if import load_stage, resolve_checkpoint
    from ..load import is_deepfloyd

    if not is_deepfloyd(init.model):
        raise FileNotFoundError(f"--init {init.model}: not an openimagen model folder, run folder or DeepFloyd IF "
                                "checkpoint; pass what `generate --model` takes (or 'bundled')")
    first = resolve_checkpoint(init.model, text=True, half=False)
    stages = [load_stage(first, stage=1, device=device)]
    if init.sr is not None:
        stages.append(load_stage(resolve_checkpoint(init.sr, text=False, half=False), stage=2, role="sr", device=device))
    enc = first / "text_encoder"
    # the rule of checkpoints/deepfloyd_if.py: fp16 T5 weights only when the folder has no full ones
    full = any(enc.glob("model.safetensors*")) or any(enc.glob("model-*.safetensors"))
    fp16_only = any(enc.glob("model.fp16*.safetensors*")) and not full
    spec = T5EncoderConfig(str(first), max_length=77, if_style=True, variant="fp16" if fp16_only else None)
    return spec, stages


_NO_ENCODER = object()  # model_folder.load skips building the encoder when given one


def default_recipe(stage_configs: list[StageConfig], lora: bool) -> dict:
    """How to fine-tune when no preset or file says: short, small batches, a gentle learning rate."""
    from .config import StageTrainConfig

    stages = [StageTrainConfig(stage=sc, steps=200, batch_size=4, min_snr_gamma=None) for sc in stage_configs]
    return to_dict(TrainConfig(stages=tuple(stages), optim=dataclasses.replace(
        TrainConfig.__dataclass_fields__["optim"].default_factory(), lr=1e-3 if lora else 5e-5, warmup_steps=10),
        ema_decay=0.99, checkpoint_every=50, sample_every=0))


def finetune_config(init: InitConfig, preset: str | None = None, config_file=None, overrides=()) -> TrainConfig:
    """The TrainConfig of a fine-tune: the model's stages and text encoder, the preset's / file's training
    knobs (which must describe the same stages) or `default_recipe`'s, then the overrides."""
    from .overrides import load_train_config

    spec, stages = load_init(init)
    configs = [s.config for s in stages]
    del stages
    if preset is not None or config_file is not None:
        data = to_dict(load_train_config(preset, config_file, []))
        check_stages_match(init.model, configs, [from_stage(d) for d in data["stages"]], "the config")
    else:
        data = default_recipe(configs, init.lora is not None)
    for d, sc in zip(data["stages"], configs):
        d["stage"] = to_dict(sc)  # the model's own schedule, conditioning and sampling settings
    data["text_encoder"], data["init"] = to_dict(spec), to_dict(init)
    return load_train_config(None, None, list(overrides), base=data)


def from_stage(d: dict) -> StageConfig:
    from ..config import from_dict

    return from_dict(StageConfig, d["stage"], where="stage")


def check_stages_match(model: str, have: list[StageConfig], want: list[StageConfig], what: str) -> None:
    """--init of a model whose stages are not the ones the config describes: one line naming the difference."""
    def show(cs):
        return ", ".join(f"{c.unet.kind} {c.resolution}px" for c in cs)
    if len(have) != len(want):
        raise ValueError(f"--init {model} has {len(have)} stage(s) ({show(have)}) but {what} has {len(want)} "
                         f"({show(want)}); drop --preset/--config to train with the model's own stages")
    for k, (h, w) in enumerate(zip(have, want)):
        if h.resolution != w.resolution or h.unet != w.unet:
            fields = [f.name for f in dataclasses.fields(h.unet) if getattr(h.unet, f.name) != getattr(w.unet, f.name, None)]
            why = f"resolution {h.resolution} vs {w.resolution}" if h.resolution != w.resolution else \
                f"U-Net fields {fields[:4]} differ" if type(h.unet) is type(w.unet) else \
                f"a {h.unet.kind} U-Net vs a {w.unet.kind} one"
            raise ValueError(f"--init {model}: stage {k} does not match {what} ({why}); drop --preset/--config to "
                             "train with the model's own stages, or give a config written for this model")


# ----------------------------------------------------------------------------------------------
# the stages of a run, what trains in them, and what a checkpoint holds


def build_stages(cfg: TrainConfig, device) -> list[Stage]:
    """The run's stages: fresh ones (random weights) or the starting model's, with adapters added."""
    if cfg.init is None:
        return [Stage(st.stage).to(device) for st in cfg.stages]
    from ..lora import add_lora

    _, loaded = load_init(cfg.init)
    check_stages_match(cfg.init.model, [s.config for s in loaded], [st.stage for st in cfg.stages], "train_config")
    stages = []
    for k, (st, s) in enumerate(zip(cfg.stages, loaded)):
        stage = Stage(st.stage, s.unet.float()).to(device)  # the config's sampling settings, the model's weights
        stage.unet.requires_grad_(cfg.trains(k))
        if not cfg.trains(k):
            stage.unet.eval()
        elif cfg.init.lora is not None:
            add_lora(stage.unet, st.stage.unet.kind, cfg.init.lora)
            stage.unet.to(device)
        if cfg.init.gradient_checkpointing and cfg.trains(k):
            if not hasattr(stage.unet, "gradient_checkpointing"):
                raise ValueError(f"gradient checkpointing: the {st.stage.unet.kind} U-Net of stage {k} does not "
                                 "support it (IF U-Nets do); drop init.gradient_checkpointing")
            stage.unet.gradient_checkpointing = True
        stages.append(stage)
    return stages


def trained_names(cfg: TrainConfig, k: int, stage: Stage) -> list[str] | None:
    """The parameters of stage k that train: None = all of them (state_dict as a whole), [] = frozen."""
    if not cfg.trains(k):
        return []
    if cfg.init is None or cfg.init.lora is None:
        return None
    return [n for n, p in stage.unet.named_parameters() if p.requires_grad]


def stage_state(names, unet, ema, opt) -> dict:
    """What a checkpoint holds for one stage: only what trains (+ its EMA and optimizer state)."""
    if names == []:
        return {"model": {}, "ema": {}, "optim": {"state": {}, "param_groups": []}}
    if names is None:
        return {"model": unet.state_dict(), "ema": ema.state_dict(), "optim": opt.state_dict()}
    params = dict(unet.named_parameters())
    return {"model": {n: params[n] for n in names}, "ema": ema.state_dict(), "optim": opt.state_dict()}


def load_stage_state(names, unet, ema, opt, saved: dict, ema_updates: int) -> None:
    if names == []:
        return
    if names is None:
        unet.load_state_dict(saved["model"])
    else:
        if set(saved["model"]) != set(names):
            odd = sorted(set(saved["model"]) ^ set(names))[:3]
            raise ValueError(f"the checkpoint's adapter weights are not this run's (e.g. {odd})")
        params = dict(unet.named_parameters())
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved["model"][n])
    opt.load_state_dict(saved["optim"])
    ema.load_state_dict(saved["ema"], ema_updates)


def ema_unet(ema, stage: Stage):
    """The U-Net to sample from and ship: the EMA copy, the frozen stage itself, or (LoRA) a copy of the
    stage with the EMA adapter weights."""
    if ema is None:
        return stage.unet
    if ema.model is not None:
        return ema.model
    unet = copy.deepcopy(stage.unet).eval().requires_grad_(False)
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for n, v in ema.shadow.items():
            params[n].copy_(v)
    return unet


def publish_adapters(cfg: TrainConfig, emas: list, stages: list[Stage], out: Path) -> None:
    """out/adapters/stage_K/ for every trained stage, from the EMA adapter weights."""
    from ..lora import save_adapter
    from .checkpoint import _remove

    for k, (e, s) in enumerate(zip(emas, stages)):
        if e is None:
            continue
        paths = sorted({n.split(".lora_")[0] for n in e.names})
        tmp, final = out / "adapters" / f".tmp-stage_{k}", out / "adapters" / f"stage_{k}"
        save_adapter(tmp, e.shadow, cfg.init.lora, paths, stage=k, stage_config=s.config, base_model=cfg.init.model)
        if final.exists():
            _remove(final)
        tmp.replace(final)


def merged_cascade(cascade):
    """The cascade with every adapter folded into its weights (`init.merge`, or on request)."""
    from ..lora import merge_adapters

    for s in cascade.stages:
        merge_adapters(s.unet)
    return cascade


# ----------------------------------------------------------------------------------------------
# memory, said before the work starts


def memory_estimate(cfg: TrainConfig, stages: list[Stage]) -> str:
    """Weights, gradients, Adam moments and EMA of what trains, in fp32; activations are not counted
    (they scale with batch size x resolution; gradient checkpointing trades them for compute)."""
    lines, total = [], 0
    for k, s in enumerate(stages):
        n_all = sum(p.numel() for p in s.unet.parameters())
        names = trained_names(cfg, k, s)
        n_train = 0 if names == [] else n_all if names is None else \
            sum(p.numel() for n, p in s.unet.named_parameters() if n in set(names))
        ema_copy = n_all if names is None else n_train
        b = 4 * (n_all + 3 * n_train + ema_copy)  # weights + (grad, Adam m, v) + EMA
        total += b
        lines.append(f"stage {k}: {n_all / 1e6:.2f}M params, {n_train / 1e6:.3f}M train -> {b / 2**20:.0f} MiB")
    return f"memory estimate (fp32, activations not included): {total / 2**20:.0f} MiB; " + "; ".join(lines)


# ----------------------------------------------------------------------------------------------
# subject data: one caption for every image, and prior preservation


class _Subject(torch.utils.data.Dataset):
    """The training images (each with `caption` when one is given), followed by the kept images: the prior
    images, then the replayed ones (each set as it is, with its own captions)."""

    def __init__(self, subject, caption: str | None, kept: list):
        self.subject, self.caption, self.kept = subject, caption, kept
        self.n = len(subject)

    def __len__(self) -> int:
        return self.n + sum(len(d) for d in self.kept)

    @property
    def captions(self) -> list[str]:
        own = [self.caption] * self.n if self.caption is not None else list(self.subject.captions)
        return own + [c for d in self.kept for c in d.captions]

    def set_epoch(self, epoch: int) -> None:
        for d in (self.subject, *self.kept):
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        if i >= self.n:
            i -= self.n
            for d in self.kept:
                if i < len(d):
                    return d[i]
                i -= len(d)
            raise IndexError(i)
        item = self.subject[i]
        return {"image": item["image"], "caption": self.caption if self.caption is not None else item["caption"]}


def with_subject(cfg: TrainConfig, dataset, out: Path):
    """The run's dataset with init.caption applied and init.prior's and init.replay's images mixed in (as is
    without any of them)."""
    init = cfg.init
    if init is None or (init.caption is None and init.prior is None and init.replay is None):
        return dataset
    if not hasattr(dataset, "captions") or not hasattr(dataset, "__len__"):
        raise ValueError("init.caption / init.prior / init.replay need a map-style dataset (shapes or a folder), "
                         "not tar shards")
    from ..data.folders import ImageCaptionFolder

    kept = []
    if init.prior is not None:
        kept.append(ImageCaptionFolder(Path(out) / "prior", max(cfg.resolutions), verify=True, seed=cfg.data.seed))
    if init.replay is not None:
        if not Path(init.replay).is_dir():
            raise FileNotFoundError(f"init.replay: {init.replay} is not a folder; give a folder of images with "
                                    "captions (NAME.png + NAME.txt) of the data the model should keep")
        kept.append(ImageCaptionFolder(Path(init.replay), max(cfg.resolutions), verify=True, seed=cfg.data.seed))
    return _Subject(dataset, init.caption, kept)


def ensure_prior_images(cfg: TrainConfig, out: Path, progress: bool = True) -> None:
    """out/prior/NNNN.png + .txt: what the starting model draws for init.prior.prompts (written once;
    a resumed run reuses them). Other processes of a multi-process run wait for the main one."""
    import os
    import time

    pc = cfg.init.prior
    folder = Path(out) / "prior"
    if pc is None or folder.is_dir():
        return
    if int(os.environ.get("RANK", "0")) != 0:
        while not folder.is_dir():
            time.sleep(1.0)
        return
    from ..data.transforms import to_pil
    from ..load import load_model
    from .checkpoint import _remove

    cascade = load_model(None if cfg.init.model == "bundled" else cfg.init.model, sr=cfg.init.sr)
    tmp = Path(out) / ".tmp-prior"
    if tmp.exists():
        _remove(tmp)
    tmp.mkdir(parents=True)
    prompts = [pc.prompts[i % len(pc.prompts)] for i in range(pc.num_images)]
    log.info("prior preservation: drawing %d images with the starting model", len(prompts))
    for b in range(0, len(prompts), 8):
        batch = prompts[b:b + 8]
        images = cascade.generate(batch, steps=pc.steps, seed=pc.seed + b // 8, progress=False).images[-1]
        for j, (img, text) in enumerate(zip(to_pil(images), batch)):
            img.save(tmp / f"{b + j:04d}.png")
            (tmp / f"{b + j:04d}.txt").write_text(text + "\n", encoding="utf-8")
    tmp.replace(folder)
