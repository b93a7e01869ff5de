"""Train every stage of a cascade in one process and one command: `train(cfg, out_dir)`.

One step of stage k (Imagen, Saharia et al. 2022, §2; Ho et al. 2021 for the cascade):
    x0      the batch at stage k's resolution; lowres = antialiased downsample to stage k-1's
    t, eps  t ~ schedule.sample_t, eps ~ N(0, I);  x_t = alpha_t x0 + sigma_t eps
    text    cached embeddings of the captions; each caption is "" with prob. caption_dropout
    SR      lowres resized and noised to a random level per sample, as at sampling (lowres.py)
    loss    diffusion_loss(unet(x_t, ...), x0, eps, t), optionally min-SNR-gamma weighted
            [+ extras_loss * unet.aux_loss(x0), the auxiliary losses of the U-Net's extras (nn/extras.py,
             e.g. the text layout's); the first extras_warmup steps use only that term and skip the U-Net]
then clip, AdamW, EMA. Stage order: "sequential" or "interleaved" (see `next_stage`).

Exact resume: everything random in a step comes from a generator seeded by (seed, rank, step) and
the data order is a permutation seeded by (seed, epoch), so a checkpoint holds only counters, the
data position, weights, EMA and optimizer state; a run killed anywhere and resumed ends with the
weights of a run never killed. Files written under out_dir:
    train_config.json  log.jsonl  embeddings/  samples/step-*.png  checkpoints/
    model/   the EMA cascade: Cascade.from_pretrained(out_dir / "model")
The same code runs under `accelerate launch` / torchrun: each rank takes its slice of every global
batch; only the main process writes files. What accelerate wraps (DDP) is `_StageLoss`, the U-Net with
the step's whole loss as its forward: so DDP sees the auxiliary terms and the extras-only warm-up steps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import faults
from ..config import to_dict
from ..io.disk import check_output_folder
from ..diffusion import diffusion_loss, q_sample
from ..diffusion.noise import rand, randn
from ..cascade import Cascade
from ..compiling import check_can_compile
from ..precision import training_mixed_precision
from ..stage import Stage
from . import checkpoint as ckpt
from . import finetune
from .config import TrainConfig, validate_unets, with_data_path, with_max_steps
from .data import EmbeddingLookup, build_dataset, collect_captions, data_batches, next_stage
from .ema import EMA
from .guards import NonFiniteLossError, holds_run, nan_message, runs_near, writing

log = logging.getLogger("openimagen.train")


# ----------------------------------------------------------------------------------------------
# schedule of work: which stage, which learning rate, which random numbers


def learning_rate(cfg: TrainConfig, k: int, step: int) -> float:
    """Stage k's lr for its optimiser step `step` (0-based): linear warm-up, then constant or cosine to 10%."""
    o, st = cfg.optim, cfg.stages[k]
    base = st.lr if st.lr is not None else o.lr
    if step < st.extras_warmup:  # the extras' warm-up: its own linear ramp, then constant
        return base * min(1.0, (step + 1) / o.warmup_steps)
    step -= st.extras_warmup  # the diffusion steps start their schedule afresh
    if step < o.warmup_steps:
        return base * (step + 1) / o.warmup_steps
    if o.decay == "cosine":
        span = max(1, st.steps - st.extras_warmup - o.warmup_steps)
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span))))
    return base


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator private to one (seed, rank, global step): nothing random needs saving."""
    digest = hashlib.blake2b(f"openimagen-train/{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


# ----------------------------------------------------------------------------------------------
# one optimisation step's loss for one stage


def stage_loss(cfg: TrainConfig, k: int, model, stage: Stage, images: dict[int, Tensor], captions: list[str],
               lookup, g: torch.Generator, extras_only: bool = False) -> Tensor:
    """The loss of stage k on one micro-batch. images: {resolution: (B, 3, R, R) in [-1, 1]}. model: the
    stage's U-Net itself (`train` runs this inside `_StageLoss`, the module that accelerate wraps).

    extras_only: a warm-up step of the U-Net's extras: only their auxiliary losses, no U-Net pass."""
    st, sc = cfg.stages[k], stage.config
    x0 = images[sc.resolution]  # (B, 3, R, R)
    B, device = x0.shape[0], x0.device
    low = images[cfg.stages[k - 1].stage.resolution] if sc.lowres else None  # (B, 3, r, r)
    if st.crop is not None:  # random aligned patches of the target and of its low-res version
        x0, low = _crop_pair(x0, low, st.crop, g)

    t = stage.schedule.sample_t(B, generator=g).to(device)  # (B,) schedule units
    eps = randn(x0.shape, g, device)
    x_t = q_sample(x0, t, stage.schedule, eps)

    drop = rand((B,), g, "cpu") < cfg.caption_dropout
    embeds, mask = lookup(["" if d else c for c, d in zip(captions, drop.tolist())])
    cond = {"text_embeds": embeds.to(device), "text_mask": mask.to(device)}  # (B, L, D), (B, L)

    if extras_only:
        a = stage.unet_inputs(x_t, t, cond)
        model.forward_extras(a["text_embeds"], a["text_mask"])
        return st.extras_loss * model.aux_loss(x0)

    if sc.lowres:
        # Noise-conditioning augmentation at a random level per sample, through the stage's own
        # LowresConditioning: the same resize and noising as sampling (lowres.py).
        level = stage.lowres_cond.training_levels(B, g, st.noise_level_max, device)
        noise = randn((B, low.shape[1], *x0.shape[-2:]), g, device)
        cond["lowres"], cond["noise_level"] = stage.lowres_cond(low, tuple(x0.shape[-2:]), level, noise)

    out = stage.call_unet(x_t, t, cond, net=model)
    # The extras' own losses on what this forward saw (the text layout: its image guess, fitted at every
    # noise level, a direct signal for "what goes where"), on top of the diffusion loss.
    aux = model.aux_loss(x0) if sc.extras and st.extras_loss else None
    aux = 0.0 if aux is None else st.extras_loss * aux
    return diffusion_loss(out.float(), x0, eps, t, stage.schedule, stage.parameterization, st.min_snr_gamma) + aux


class _StageLoss(torch.nn.Module):
    """What accelerate prepares for stage k: the stage's U-Net (the only child: the same weights, in the
    same order), with `stage_loss` as the forward. DDP syncs only what runs inside the forward of the
    module it wraps, and finds unused weights from that forward's output; with the whole loss inside, a
    step may add the extras' auxiliary losses or train the extras alone while the U-Net's own forward
    returns one tensor."""

    def __init__(self, cfg: TrainConfig, k: int, stage: Stage, lookup):
        super().__init__()
        self.unet = stage.unet
        self.fixed = (cfg, k, stage, lookup)  # a tuple: the Stage is not registered a second time

    def forward(self, images: dict[int, Tensor], captions: list[str], g: torch.Generator,
                extras_only: bool = False) -> Tensor:
        cfg, k, stage, lookup = self.fixed
        return stage_loss(cfg, k, self.unet, stage, images, captions, lookup, g, extras_only)


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
# the run


def train(cfg: TrainConfig, out_dir, *, resume: bool = False, max_steps: int | None = None,
          data_path: str | None = None, progress: bool = True) -> Path:
    """Train every stage of `cfg`; returns `out_dir/model` (the EMA cascade, for `Cascade.from_pretrained`),
    or for a LoRA fine-tune `out_dir/adapters` (stage_K/ adapter folders, for `generate --lora`).

    resume: continue from the newest complete checkpoint in out_dir (from step 0 if the run was killed before
        its first checkpoint); a folder that holds no run is refused, naming the folders nearby that do.
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
    cfg = with_data_path(cfg, data_path)
    validate_unets(cfg)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a GPU; use 'bf16' on the CPU (or 'no')")
    if cfg.compile:
        check_can_compile("cuda" if torch.cuda.is_available() else "cpu")
    out, root = check_output_folder(out_dir), Path(out_dir) / "checkpoints"
    found = ckpt.find_checkpoint(root)
    if found is not None and not resume:
        raise ValueError(f"{out} already holds a training run (checkpoint {found.name}); pass resume=True "
                         "(--resume) to continue it, or choose a new output folder")
    if resume and found is None and not holds_run(out):
        raise ValueError(f"nothing to resume in {out}: it holds no training run (no train_config.json, "
                         f"checkpoints/ or embeddings/); {runs_near(out)}, or drop --resume to start a new run there")
    if cfg.init is not None:
        finetune.ensure_prior_images(cfg, out, progress)  # prior preservation: the model's own images, once
    dataset = finetune.with_subject(cfg, build_dataset(cfg), out)

    if AcceleratorState._shared_state and AcceleratorState().num_processes == 1:
        AcceleratorState._reset_state()  # a second train() in one process may pick another precision
    # Launched as several processes (torchrun / accelerate launch) on a machine without CUDA, accelerate
    # only joins them into one gloo group when told to use the CPU; otherwise every process would train
    # alone, on the whole batch, writing the same folder.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    from accelerate.utils import DistributedDataParallelKwargs

    # A warm-up step of the extras leaves the rest of the U-Net without gradients; DDP must expect that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=any(st.extras_warmup for st in cfg.stages))
    # "auto" is decided here, on the machine that trains (a resumed run on another machine decides again).
    mixed = training_mixed_precision(cfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    log.info("mixed precision: %s (asked: %s)", mixed, cfg.mixed_precision)
    acc = Accelerator(mixed_precision=mixed, cpu=launched and not torch.cuda.is_available(),
                      kwargs_handlers=[ddp])
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    for i, st in enumerate(cfg.stages):
        if st.batch_size % (world * cfg.optim.grad_accum):
            raise ValueError(f"stages.{i}.batch_size={st.batch_size} is not divisible by processes x grad_accum "
                             f"= {world} x {cfg.optim.grad_accum}; make the global batch a multiple of it")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        writing(out, "train_config.json", lambda: ckpt.atomic_write_text(
            out / "train_config.json", json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n"))

    # -- text: every caption encoded once, into out_dir/embeddings ----------------------------
    lookup = EmbeddingLookup.build(cfg, collect_captions(dataset) + list(cfg.sample_prompts),
                                   out / "embeddings", acc, progress and main)

    # -- models, optimisers, EMA, and the state of a resumed run --------------------------------
    torch.manual_seed(cfg.seed)  # identical initial weights (and adapters) in every process and every run
    stages = finetune.build_stages(cfg, acc.device)  # fresh, or a fine-tune's starting model (finetune.py)
    names = [finetune.trained_names(cfg, k, s) for k, s in enumerate(stages)]  # None: all; []: frozen
    if cfg.init is not None and main:  # before the first step, so a run that cannot fit says so early
        estimate = finetune.memory_estimate(cfg, stages)
        log.info(estimate)
        if progress:
            print(estimate, flush=True)
    emas = [None if n == [] else EMA(s.unet, cfg.ema_decay, cfg.ema_warmup, names=n)  # before accelerate wraps
            for s, n in zip(stages, names)]
    opts = [None if n == [] else adamw([p for p in s.unet.parameters() if p.requires_grad], cfg.optim, acc.device)
            for s, n in zip(stages, names)]
    if cfg.compile:  # in place (Module.compile): state-dict keys, checkpoints and the EMA copies stay as they are
        for s in stages:
            s.unet.compile(dynamic=False)
    done, step, position, scaler_state = [0] * len(stages), 0, [0, 0], None
    if found is not None:
        _check_same_share(found, cfg)
        state, saved = _load_matching(found, cfg, stages, opts, emas, names)
        step, done = state["step"], list(state["stage_steps"])
        positions = state["data_positions"]
        position = positions[rank] if rank < len(positions) else positions[0]
        scaler_state = state.get("scaler")
        if state.get("config") != to_dict(cfg):
            log.warning("the config differs from the one %s was written with; resuming anyway", found)
        log.info("resuming from %s (step %d)", found, step)
    if main:
        _truncate_log(out / "log.jsonl", step)
    models, opts = _prepare(acc, [_StageLoss(cfg, k, s, lookup) if o is not None else None
                                  for k, (s, o) in enumerate(zip(stages, opts))], opts)
    if scaler_state is not None and acc.scaler is not None:
        acc.scaler.load_state_dict(scaler_state)

    def save() -> None:
        positions = acc.gather(torch.tensor([position], device=acc.device)).view(-1, 2).tolist()
        if main:
            state = {"step": step, "stage_steps": done, "data_positions": positions,
                     "ema_updates": [e.num_updates if e is not None else 0 for e in emas], "config": to_dict(cfg),
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
            per_stage = [finetune.stage_state(n, s.unet, e, o) for n, s, e, o in zip(names, stages, emas, opts)]
            ckpt.save_checkpoint(root, step, state, per_stage, cfg.keep_checkpoints)
            faults.point("train.published")
            _publish(cfg, emas, stages, lookup, out)
        acc.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------
    batches = data_batches(cfg, dataset, position, done, rank, world)
    bar = tqdm(total=sum(st.steps for k, st in enumerate(cfg.stages) if cfg.trains(k)), initial=step, desc="training",
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
                loss = model(images, captions, g, done[k] < cfg.stages[k].extras_warmup) / len(micro_batches)
                loss = faults.value("train.loss", loss)
                acc.backward(loss)
            step_loss += loss.detach()
        if not torch.isfinite(acc.reduce(step_loss.clone(), reduction="sum")).item():  # every rank agrees
            opt.zero_grad(set_to_none=True)
            bar.close()
            raise NonFiniteLossError(nan_message(cfg, k, step, done[k], step_loss, ckpt.find_checkpoint(root)))
        if cfg.optim.grad_clip is not None:
            acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        emas[k].update(acc.unwrap_model(model).unet)
        faults.point("train.step")
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
            grid = out / "samples" / f"step-{step:07d}.png"
            writing(out / "samples", grid.name, lambda: _sample_grid(cfg, emas, stages, lookup, done, mixed, grid))
    bar.close()

    lora = cfg.init is not None and cfg.init.lora is not None
    published = out / ("adapters" if lora else "model")
    if main and not (published if lora else published / "cascade.json").exists():  # resumed a finished run
        _publish(cfg, emas, stages, lookup, out)
    grid = out / "samples" / f"step-{step:07d}.png"
    if main and not grid.is_file():  # a kill landed in the final grid's write: the checkpoint was already done
        writing(out / "samples", grid.name, lambda: _sample_grid(cfg, emas, stages, lookup, done, mixed, grid))
    acc.wait_for_everyone()
    return published


# ----------------------------------------------------------------------------------------------
# helpers of the run


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _check_same_share(found: Path, cfg: TrainConfig) -> None:
    """A run of some stages (--train-stages) resumes only as that share: the others are not in its checkpoints."""
    saved = (ckpt.read_state(found) or {}).get("config", {}).get("train_stages")
    want = list(cfg.train_stages) if cfg.train_stages is not None else None
    if saved != want:
        have = f"trains stage(s) {saved}" if saved is not None else "trains every stage"
        fix = f"--train-stages {','.join(map(str, saved))}" if saved is not None else "no --train-stages"
        raise ValueError(f"the run in {found.parent.parent} {have}; resume it with {fix} (or start a new run folder)")


def _load_matching(found: Path, cfg: TrainConfig, stages: list[Stage], opts: list, emas: list, names: list):
    """Load a checkpoint into the freshly built stages, or say in one line why it does not fit."""
    fix = f"resume with the config it was written with ({found.parent.parent / 'train_config.json'})"
    n_saved = len(ckpt._readable(found).get("stage_steps", []))
    if n_saved != len(stages):
        raise ValueError(f"checkpoint {found} has {n_saved} stages but the config has {len(stages)}; {fix}")
    state, saved = ckpt.load_checkpoint(found, len(stages))
    for k, (s, o, e, sv, n) in enumerate(zip(stages, opts, emas, saved, state["ema_updates"])):
        try:
            finetune.load_stage_state(names[k], s.unet, e, o, sv, n)
        except (RuntimeError, ValueError, KeyError) as err:
            why = str(err).strip().splitlines()[0][:300]
            raise ValueError(f"checkpoint {found} does not fit stage {k} of this config ({why}); {fix}") from None
    return state, saved


def adamw(params: list, o, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the device (CPU, CUDA): one pass over all the
    parameters instead of ~10 elementwise ops per tensor; on the CPU the optimiser step of shapes-small's base
    takes 24 ms instead of 86 (docs/decisions.md#fused-adamw). Values agree with the per-tensor loop to float
    rounding. A resumed run keeps the implementation its checkpoint was written with (load_state_dict restores
    the `fused` flag with the other hyperparameters), so exact resume holds for runs started before this."""
    fused = True if device.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params) else None
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             fused=fused)


def _prepare(acc, unets: list, opts: list) -> tuple[list, list]:
    """accelerate.prepare on the stages that train (frozen ones are None and stay None)."""
    idx = [k for k, u in enumerate(unets) if u is not None]
    prepared = acc.prepare(*[unets[k] for k in idx], *[opts[k] for k in idx])
    if not isinstance(prepared, (list, tuple)):
        prepared = [prepared]
    models, optims = [None] * len(unets), [None] * len(unets)
    for j, k in enumerate(idx):
        models[k], optims[k] = prepared[j], prepared[len(idx) + j]
    return models, optims


def _ema_cascade(cfg: TrainConfig, emas: list, stages: list[Stage], lookup) -> Cascade:
    # A shapes-world model reads terse prompts best rewritten as its training captions (prompt_expansion.py)
    expansion = "shapes" if cfg.data.kind == "shapes" else None
    return Cascade(lookup, [Stage(st.stage, finetune.ema_unet(e, s)) for st, e, s in zip(cfg.stages, emas, stages)],
                   prompt_expansion=expansion)


def _publish(cfg: TrainConfig, emas: list, stages: list[Stage], lookup, out: Path) -> None:
    """out/model (the EMA cascade) or, for a LoRA fine-tune, out/adapters/stage_K (+ out/model merged on request)."""
    if cfg.init is None or cfg.init.lora is None:
        ckpt.publish_model(_ema_cascade(cfg, emas, stages, lookup), out)
        return
    finetune.publish_adapters(cfg, emas, stages, out)
    if cfg.init.merge:
        ckpt.publish_model(finetune.merged_cascade(_ema_cascade(cfg, emas, stages, lookup)), out)


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
        def append():
            with open(path, "a", encoding="utf-8") as f:
                for line in lines:
                    f.write(json.dumps(line) + "\n")
        writing(path.parent, path.name, append)


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
def _sample_grid(cfg: TrainConfig, emas: list, stages: list[Stage], lookup, done: list[int], mixed: str,
                 path: Path) -> None:
    """A PNG: one row per sample prompt, one column per stage trained so far (upscaled to the last size)."""
    from PIL import Image

    from ..data.transforms import to_pil

    if not cfg.trains(0) and cfg.init is None:  # a split run's SR share: its base is another run's, untrained here
        log.info("no sample grid: this run trains stages %s of a split cascade, not its base", cfg.train_stages)
        return
    n = 1
    while n < len(done) and (done[n] > 0 or cfg.init is not None):  # untrained fresh stages would draw noise
        n += 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    result = _ema_cascade(cfg, emas, stages, lookup).generate(list(cfg.sample_prompts), steps=cfg.sample_steps,
                                                      seed=cfg.seed, stop_at=n, progress=False,
                                                      autocast_dtype=dtype, expand=False)  # the network as trained
    R = result.images[-1].shape[-1]
    cols = [to_pil(F.interpolate(x.float(), size=(R, R), mode="nearest")) for x in result.images]
    grid = Image.new("RGB", (R * len(cols), R * len(cfg.sample_prompts)))
    for c, column in enumerate(cols):
        for r, img in enumerate(column):
            grid.paste(img, (c * R, r * R))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # whole or absent: a kill mid-write leaves no broken PNG
    try:
        grid.save(tmp, format="PNG")
        faults.point("samples.grid", str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
