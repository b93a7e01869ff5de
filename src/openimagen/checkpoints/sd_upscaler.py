"""The Stable Diffusion x4 upscaler (diffusers format) as a latent stage: DeepFloyd IF's stage III.

    stage = load_upscaler_stage("stabilityai/stable-diffusion-x4-upscaler", dtype=torch.float16)
    cascade = load_if_cascade("DeepFloyd/IF-I-XL-v1.0", sr=["DeepFloyd/IF-II-L-v1.0",
                              "stabilityai/stable-diffusion-x4-upscaler"])           # 64, 256, 1024 px

Translation only (stage3_and_editing.md §1.1-1.3): `unet/` -> nn/sd_unet.SDUNet, `vae/` -> nn/vae.AutoencoderKL
(either spelling of its attention keys; in float32 when `force_upcast`, whatever `dtype`), `text_encoder/` +
`tokenizer/` -> text_clip.CLIPEncoder, `scheduler/` (DDIM: v-prediction on the scaled_linear table, steps_offset,
set_alpha_to_one) -> the stage's schedule and sampler, `low_res_scheduler/` -> the low-res noise schedule,
`model_index.json`'s max_noise_level -> the largest noise level accepted. Defaults are the pipeline's: 75 steps,
guidance 9, noise level 20 (IF's documents use 100: `load_if_cascade` sets that when the x4 follows IF stage II).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import hub
from ..io.diffusers import HALF, load_component, read_json, read_ddim_scheduler, read_noise_schedule
from ..io.errors import CheckpointError
from ..latent_stage import LatentStage
from ..nn.sd_unet import SDConfigError, SDUNet, SDUNetConfig
from ..nn.vae import AutoencoderKL, VAEConfig, VAEConfigError, upgrade_legacy_keys
from ..stage import StageConfig

PIPELINE = "StableDiffusionUpscalePipeline"
LAYOUT = ("a Stable Diffusion upscaler in the diffusers format is a folder holding model_index.json "
          f"(_class_name {PIPELINE}), unet/ and vae/ (config.json + diffusion_pytorch_model.safetensors), "
          "text_encoder/ + tokenizer/ (CLIP), scheduler/ and low_res_scheduler/ (scheduler_config.json)")
DEFAULTS = dict(steps=75, guidance=9.0, noise_level=20.0)
IF_NOISE_LEVEL = 100.0  # what the IF documents pass to the x4 as stage III


def is_upscaler_folder(folder: Path) -> bool:
    """Whether a local folder holds a diffusers Stable Diffusion upscale pipeline (by its model_index.json)."""
    index = Path(folder) / "model_index.json"
    return index.is_file() and read_json(index).get("_class_name") == PIPELINE


def names_upscaler(name_or_path: str) -> bool:
    """Whether a folder or hub id is a Stable Diffusion upscaler (a hub id: by its model_index.json alone)."""
    where = hub.resolve(name_or_path, "model", LAYOUT)
    if isinstance(where, str):
        where = hub.snapshot(where, ["model_index.json"], "model", LAYOUT)
    return is_upscaler_folder(where)


def resolve_upscaler(name_or_path: str, *, half: bool = False) -> Path:
    """A local folder as is; a hub id through the huggingface_hub cache (only the files the stage reads)."""
    where = hub.resolve(name_or_path, "upscaler", LAYOUT)
    if isinstance(where, Path):
        return where
    files = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/*",
             "scheduler/*.json", "low_res_scheduler/*.json"]
    weights = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/model.safetensors"]
    w16 = [w.replace(".safetensors", ".fp16.safetensors") for w in weights]
    folder = hub.snapshot(where, files + (w16 if half else weights), "upscaler", LAYOUT)
    if not any((folder / "unet").glob("diffusion_pytorch_model*.safetensors")):
        folder = hub.snapshot(where, files + (weights if half else w16), "upscaler", LAYOUT)
    return folder


def load_upscaler_stage(model: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        resolution: int | None = None, noise_level: float | None = None) -> LatentStage:
    """The x4 upscaler as one LatentStage carrying its own CLIP text encoder.

    `resolution`: the output size it plans for (4 x its input's; the default is 4 x the U-Net's sample_size);
    `noise_level`: the sampling default (None: the pipeline's 20).
    """
    folder = resolve_upscaler(str(model), half=dtype in HALF)
    _check_layout(folder)
    index = read_json(folder / "model_index.json")
    dtype = dtype or torch.float32
    variant = "fp16" if dtype in HALF else None
    try:
        unet = load_component(folder, "unet", lambda d: SDUNet(SDUNetConfig.from_diffusers_config(d)),
                              dtype=dtype, device=device, variant=variant)
        vae_cfg = VAEConfig.from_diffusers_config(read_json(folder / "vae" / "config.json"))
        vae_dtype = torch.float32 if vae_cfg.force_upcast else dtype  # its decoder overflows in fp16
        vae = load_component(folder, "vae", lambda d: AutoencoderKL(VAEConfig.from_diffusers_config(d)),
                             dtype=vae_dtype, device=device, variant=variant, rename=upgrade_legacy_keys)
    except (SDConfigError, VAEConfigError) as e:
        raise CheckpointError(f"{folder}: {e}") from None
    sampling = read_ddim_scheduler(_scheduler(folder, "scheduler"))
    if sampling["parameterization"].learned_variance or unet.cfg.out_channels != vae.cfg.latent_channels:
        raise CheckpointError(f"{folder}: the U-Net outputs {unet.cfg.out_channels} channels for "
                              f"{vae.cfg.latent_channels} latent channels")
    lowres_schedule = read_noise_schedule(_scheduler(folder, "low_res_scheduler"))
    from ..text_clip import CLIPEncoder

    text = CLIPEncoder(str(folder), dtype=dtype, device=device)
    if text.dim != unet.cfg.text_dim:
        raise CheckpointError(f"{folder}: the CLIP encoder is {text.dim}-d but the U-Net expects {unet.cfg.text_dim}-d")
    f = vae.cfg.downscale
    config = StageConfig(
        resolution=resolution or f * (unet.cfg.sample_size or 128), unet=unet.cfg, lowres=True,
        lowres_schedule=lowres_schedule, lowres_resize="nearest", **sampling,
        **dict(DEFAULTS, noise_level=DEFAULTS["noise_level"] if noise_level is None else float(noise_level)))
    return LatentStage(config, unet, vae, text_encoder=text,
                       max_noise_level=float(index.get("max_noise_level", 350))).eval()


def _scheduler(folder: Path, name: str) -> Path:
    path = folder / name / "scheduler_config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {LAYOUT}")
    return path


def _check_layout(folder: Path) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; {LAYOUT}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise CheckpointError(f"{folder} is not an upscaler: it has no model_index.json; {LAYOUT}")
    name = read_json(index).get("_class_name")
    if name != PIPELINE:
        hint = " (a DeepFloyd IF stage: give it as --model or the first --sr)" if str(name).startswith("IF") else ""
        raise CheckpointError(f"{folder} is a {name}, not a Stable Diffusion upscaler ({PIPELINE}){hint}; {LAYOUT}")
