"""DeepFloyd IF checkpoints (diffusers format) as an ordinary openimagen `Cascade`.

    cascade = load_if_cascade("DeepFloyd/IF-I-XL-v1.0", sr="DeepFloyd/IF-II-L-v1.0", dtype=torch.float16)
    out = cascade.generate("a corgi in a spacesuit", device="cuda", offload=True)   # out.images: [64px, 256px]

Nothing here samples or reads files itself: io/ reads the folder (io/diffusers.py) or fetches it (io/hub.py),
this module translates it into our own pieces, and the engine runs them.
- U-Net: `nn/if_unet.IFUNet`, filled strictly from `unet/diffusion_pytorch_model*.safetensors`.
- Scheduler (`scheduler/scheduler_config.json`, a DDPMScheduler): the discrete `squaredcos_cap_v2` table
  is our "ddpm_cosine" schedule with "leading" spacing; `variance_type="learned_range"` is
  `Parameterization(eps, learned_variance=True)`; `thresholding` is dynamic thresholding with
  p = dynamic_thresholding_ratio (0.95) and max = sample_max_value (1.5 stage I, 1.0 stage II).
- Stage II: the 64 px image is enlarged bilinearly (align_corners=True), noised once with
  `image_noising_scheduler` (the same cosine table) at noise level 250, and the level is the U-Net's class label.
- Text: T5 from stage I's `text_encoder/` + `tokenizer/`, 77 tokens padded to max length, lower-cased;
  stage II reuses it (IF-II repos ship no usable text encoder).
Defaults are those of diffusers' IF pipelines (docs/reference/deepfloyd_if.md §3.4): 100 steps and
guidance 7.0 for stage I, 50 and 4.0 for stage II. Named lists ("smart50") go through `generate(steps=...)`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import hub
from ..io.diffusers import HALF, load_component, read_json, read_noise_schedule, read_sampling_scheduler
from ..io.errors import CheckpointError
from ..nn.if_unet import IFConfigError, IFUNet, IFUNetConfig, if_stage
from ..cascade import Cascade
from ..stage import Stage, StageConfig
from ..text import T5Encoder

IFCheckpointError = CheckpointError  # the name IF callers catch; every foreign-checkpoint error is this one

__all__ = ["load_if_cascade", "load_stage", "load_if_unet", "resolve_checkpoint", "IFCheckpointError",
           "IFConfigError", "LAYOUT"]

LAYOUT = (
    "a DeepFloyd IF checkpoint in the diffusers format is a folder holding model_index.json, "
    "unet/config.json + unet/diffusion_pytorch_model[.fp16].safetensors, scheduler/scheduler_config.json, "
    "text_encoder/ (T5) and tokenizer/ for stage I, and image_noising_scheduler/scheduler_config.json "
    "for stage II"
)
PIPELINES = {"IFPipeline": 1, "IFSuperResolutionPipeline": 2}
DEFAULTS = {1: dict(steps=100, guidance=7.0), 2: dict(steps=50, guidance=4.0, noise_level=250.0)}
_STAGE_NAME = {1: "stage I (base, 64 px)", 2: "stage II (super-resolution)"}


def load_if_cascade(model: str, sr: str | list[str] | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, clean_caption: bool = False) -> Cascade:
    """A Cascade from an IF stage I checkpoint (+ optionally stage II, + optionally the SD x4 upscaler as
    stage III), each a local folder or a hub id; `sr` is one name or a list in cascade order.

    The x4 upscaler (checkpoints/sd_upscaler.py) brings its own CLIP text encoder and defaults to IF's
    documented noise level 100 when it follows IF stage II.

    Hub ids are fetched with `huggingface_hub.snapshot_download` into its cache (only the files named in
    LAYOUT; fp16 weights when `dtype` is half). `device`/`dtype` place every weight; to keep models on
    the CPU and run each on the accelerator only while it samples, load with device="cpu" and call
    `generate(..., device="cuda", offload=True)`.
    """
    half = dtype in HALF
    first = resolve_checkpoint(model, text=True, half=half)
    stages = [load_stage(first, stage=1, role="model", device=device, dtype=dtype)]
    from .sd_upscaler import IF_NOISE_LEVEL, load_upscaler_stage, names_upscaler

    for k, name in enumerate([] if sr is None else [sr] if isinstance(sr, str) else list(sr)):
        if names_upscaler(name):
            stages.append(load_upscaler_stage(name, device=device, dtype=dtype, resolution=4 * stages[-1].resolution,
                                              noise_level=IF_NOISE_LEVEL))
        elif k == 0:
            stages.append(load_stage(resolve_checkpoint(name, text=False, half=half), stage=2, role="sr",
                                     device=device, dtype=dtype))
        else:
            raise IFCheckpointError(f"--sr {name}: after IF stage II only the Stable Diffusion x4 upscaler "
                                    "(stabilityai/stable-diffusion-x4-upscaler) can follow as stage III")
    text = _load_t5(first, device=device, dtype=dtype, half=half, clean_caption=clean_caption)
    for s in stages:
        if s.text_encoder is not None:  # the x4 upscaler reads its own CLIP
            continue
        want = s.unet.cfg.text_dim
        if text.dim != want:
            raise IFCheckpointError(f"the T5 in {first / 'text_encoder'} is {text.dim}-d but the U-Net of stage "
                                    f"{s.resolution}px expects {want}-d text; the checkpoints do not belong together")
    return Cascade(text, stages)


# ----------------------------------------------------------------------------- one stage


def load_stage(folder: Path, *, stage: int, role: str = "model", device="cpu", dtype=None) -> Stage:
    """One IF U-Net with its sampling settings, checking it is the stage the caller asked for."""
    folder = Path(folder)
    _check_layout(folder, stage)
    unet_cfg = IFUNetConfig.from_diffusers_config(read_json(folder / "unet" / "config.json"))
    found = if_stage(unet_cfg)
    if found != stage:
        flag = "--model (model=)" if found == 1 else "--sr (sr=)"
        raise IFCheckpointError(
            f"{folder} is a {_STAGE_NAME[found]} IF model, but it was given as "
            f"{'--sr (sr=)' if role == 'sr' else '--model (model=)'}, which needs a {_STAGE_NAME[stage]} model; "
            f"pass it as {flag} (stage I: IF-I-XL/L/M, stage II: IF-II-L/M)")
    index = folder / "model_index.json"
    if index.is_file():
        name = read_json(index).get("_class_name")
        if name in PIPELINES and PIPELINES[name] != stage:
            raise IFCheckpointError(f"{index} says {name} but unet/config.json is a {_STAGE_NAME[stage]} U-Net; "
                                    "the folder mixes two checkpoints")
    # 6 output channels: eps and the variance interpolation of 3 image channels ("learned_range")
    sched = read_sampling_scheduler(_scheduler_config(folder, "scheduler"),
                                    learned_variance=unet_cfg.out_channels == 6)
    extra = {}
    if stage == 2:
        noising = read_noise_schedule(_scheduler_config(folder, "image_noising_scheduler"))
        extra = dict(lowres=True, lowres_schedule=noising, lowres_resize="bilinear", lowres_align_corners=True)
    size = unet_cfg.sample_size or (64 if stage == 1 else 256)
    config = StageConfig(
        resolution=int(size if isinstance(size, int) else size[0]),
        unet=unet_cfg, sampler="ddpm", **sched, **DEFAULTS[stage], **extra)
    unet = load_if_unet(folder, dtype=dtype, device=device)
    return Stage(config, unet).eval()


def load_if_unet(path: str | Path, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> IFUNet:
    """An IF U-Net from a diffusers folder: a pipeline folder holding `unet/`, or the `unet/` folder itself.

    Weights: `diffusion_pytorch_model[.fp16].safetensors` (fp16 first when `dtype` is half), sharded or
    not, else a `.bin` read with `weights_only=True`; every key and shape is checked. `dtype` defaults to
    float32, `device` to the CPU.
    """
    dtype = dtype or torch.float32
    unet = load_component(Path(path), "unet", lambda d: IFUNet(IFUNetConfig.from_diffusers_config(d)),
                          dtype=dtype, device=device or "cpu", variant="fp16" if dtype in HALF else None)
    return unet.eval()


def _scheduler_config(folder: Path, name: str) -> Path:
    path = folder / name / "scheduler_config.json"
    if not path.is_file():
        raise IFCheckpointError(f"{path} is missing; {LAYOUT}")
    return path


def _check_layout(folder: Path, stage: int) -> None:
    if not folder.is_dir():
        raise IFCheckpointError(f"{folder} is not a folder; {LAYOUT}")
    if not (folder / "unet" / "config.json").is_file():
        has = sorted(p.name for p in folder.iterdir())[:8]
        raise IFCheckpointError(f"{folder} is not a DeepFloyd IF checkpoint: no unet/config.json (it holds {has}); "
                                f"{LAYOUT}")


# ----------------------------------------------------------------------------- text encoder


def _load_t5(folder: Path, *, device, dtype, half: bool, clean_caption: bool) -> T5Encoder:
    enc, tok = folder / "text_encoder", folder / "tokenizer"
    if not (enc / "config.json").is_file() or not tok.is_dir():
        raise IFCheckpointError(f"{folder} has no text_encoder/ (config.json + weights) and tokenizer/: stage I "
                                f"brings the T5 encoder the whole cascade uses; {LAYOUT}")
    full = any(enc.glob("model.safetensors*")) or any(enc.glob("model-*.safetensors"))
    fp16 = any(enc.glob("model.fp16*.safetensors*"))
    variant = "fp16" if fp16 and (half or not full) else None
    return T5Encoder(str(folder), max_length=77, if_style=True, dtype=dtype, device=device,
                     clean_caption=clean_caption, variant=variant)


# ----------------------------------------------------------------------------- hub


def resolve_checkpoint(name_or_path: str, *, text: bool, half: bool) -> Path:
    """A local folder as is; a hub id ("DeepFloyd/IF-I-XL-v1.0") through the huggingface_hub cache."""
    where = hub.resolve(name_or_path, "IF checkpoint", LAYOUT)
    if isinstance(where, Path):
        return where
    common = ["model_index.json", "unet/config.json", "scheduler/*.json", "image_noising_scheduler/*.json"]
    if text:
        common += ["text_encoder/config.json", "tokenizer/*"]
    unet_w = ["unet/diffusion_pytorch_model.safetensors*"]
    unet_w16 = ["unet/diffusion_pytorch_model.fp16.safetensors*"]
    t5_w = ["text_encoder/model.safetensors*", "text_encoder/model-*.safetensors"] if text else []
    t5_w16 = ["text_encoder/model.fp16*.safetensors*"] if text else []
    first, second = (unet_w16 + t5_w16, unet_w + t5_w) if half else (unet_w + t5_w, unet_w16 + t5_w16)
    folder = hub.snapshot(where, common + first, "IF checkpoint", LAYOUT)
    if not any((folder / "unet").glob("diffusion_pytorch_model*.safetensors*")) or \
            (text and not any((folder / "text_encoder").glob("model*.safetensors*"))):
        # the repo has only the other precision
        folder = hub.snapshot(where, common + second, "IF checkpoint", LAYOUT)
    return folder
