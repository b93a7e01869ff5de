"""Reading diffusers-format folders: model configs and weights, strictly checked, and scheduler configs.

    unet = load_component(folder, "unet", lambda cfg: IFUNet(IFUNetConfig.from_diffusers_config(cfg)),
                          dtype=torch.float16, device="cuda", variant="fp16")
    fields = read_sampling_scheduler(folder / "scheduler" / "scheduler_config.json", learned_variance=True)

A diffusers pipeline folder holds one subfolder per component (unet/, vae/, scheduler/, text_encoder/, ...).
A model component is `config.json` beside `diffusion_pytorch_model[.<variant>].safetensors`, or a sharded
`...safetensors.index.json` naming its shards, or a legacy `.bin`, which is read with
`torch.load(weights_only=True)` (tensors only, never code). This module is the only one that knows that
layout; `checkpoints/*.py` translate the configs into ours and `nn/` builds the modules from them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..diffusion import Parameterization, ScheduleConfig
from .errors import CheckpointError

WEIGHTS_NAME = "diffusion_pytorch_model"
HALF = (torch.float16, torch.bfloat16)


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a CheckpointError that says to re-download it."""
    try:
        d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return d


# ----------------------------------------------------------------------------- model components


def find_component(folder: Path, subfolder: str) -> Path:
    """The folder of one model component: `folder` itself when it holds config.json, else `folder/subfolder`."""
    folder = Path(folder)
    for d in (folder, folder / subfolder):
        if (d / "config.json").is_file():
            return d
    what = "does not exist" if not folder.exists() else f"has neither config.json nor {subfolder}/config.json"
    raise CheckpointError(f"{folder} {what}; expected a diffusers folder: {subfolder}/config.json + "
                          f"{subfolder}/{WEIGHTS_NAME}[.fp16].safetensors (or the {subfolder}/ folder itself)")


def read_config(folder: Path, subfolder: str) -> tuple[Path, dict]:
    """(the component's folder, its config.json as a dict)."""
    d = find_component(folder, subfolder)
    return d, read_json(d / "config.json")


def weight_files(d: Path, variant: str | None = None, name: str = WEIGHTS_NAME) -> list[Path]:
    """The weight files to read: safetensors before .bin; the `variant` ("fp16") first, then the other precision.

    A repo may ship only one precision, so the other is a fallback, not an error.
    """
    d = Path(d)
    order = [variant, None] if variant else [None, "fp16"]
    for ext in (".safetensors", ".bin"):
        for v in order:
            stem = f"{name}.{v}{ext}" if v else f"{name}{ext}"
            index = d / f"{stem}.index.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
                    raise CheckpointError(f"{index} is not a valid shard index ({e!r})") from None
                if any(not isinstance(s, str) or Path(s).name != s for s in shards):
                    raise CheckpointError(f"{index} names shards outside its folder: {shards[:4]}")
                return [d / s for s in shards]
            if (d / stem).is_file():
                return [d / stem]
    raise CheckpointError(f"no {name}*.safetensors in {d}; expected config.json + {name}[.fp16].safetensors "
                          f"(or a sharded {name}.safetensors.index.json, or a .bin)")


def read_weights(d: Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 variant: str | None = None, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """Every tensor of the component in `d`, cast to dtype/device one at a time as it is read (low peak memory)."""
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415 (lazy: nothing heavy at import)

    device = torch.device(device)
    state = {}
    for f in weight_files(d, variant, name):
        if not f.is_file():
            raise CheckpointError(f"shard {f.name} named by the index is missing from {d}")
        if f.suffix == ".bin":  # legacy pickle container: tensors only (weights_only), never code
            try:
                loaded = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 (pickle and zip errors come in many types)
                raise CheckpointError(f"{f} is not a readable tensor file ({e}); re-download it") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                raise CheckpointError(f"{f} holds a {type(loaded).__name__}, not a dict of tensors")
            state.update((k, _finite(v, k, f).to(device=device, dtype=dtype)) for k, v in loaded.items())
            continue
        try:
            with safe_open(str(f), framework="pt", device="cpu") as sf:
                for k in sf.keys():
                    state[k] = _finite(sf.get_tensor(k), k, f).to(device=device, dtype=dtype)
        except SafetensorError as e:
            raise CheckpointError(f"{f} is not a readable safetensors file ({e}); re-download it") from None
    return state


def _finite(v: torch.Tensor, key: str, f: Path) -> torch.Tensor:
    """Weights with NaN/inf (a garbled file) are refused at load, not discovered as a wrong image."""
    if v.is_floating_point() and not torch.isfinite(v).all():
        raise CheckpointError(f"{f} holds NaN/inf values in {key!r}: the file is damaged; re-download it")
    return v


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> nn.Module:
    """Fill `module` (possibly built on the meta device) from `state`: every key, every shape, or a clear error."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)} vs config {expected[k]}"
                   for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        def show(xs):
            return ", ".join(xs[:8]) + (f", ... ({len(xs)} in all)" if len(xs) > 8 else "")
        raise CheckpointError(
            f"weights in {where} do not match its config.json: missing {len(missing)} [{show(missing)}]; "
            f"unexpected {len(unexpected)} [{show(unexpected)}]; wrong shape {len(wrong)} [{show(wrong)}]")
    module.load_state_dict(state, strict=True, assign=True)
    return module


def load_component(folder: Path, subfolder: str, build: Callable[[dict], nn.Module], *,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   variant: str | None = None, rename: Callable[[dict], dict] | None = None) -> nn.Module:
    """A model from a diffusers component folder: `build(config dict)` on the meta device, then filled strictly.

    The config is parsed (and refused, by `build`) before any weight is read. `rename(state)` translates
    an older spelling of the keys first (the VAE's pre-2023 attention names), so both spellings load strictly.
    """
    d, config = read_config(folder, subfolder)
    with torch.device("meta"):
        model = build(config)
    state = read_weights(d, dtype=dtype, device=device, variant=variant)
    return load_strict(model, rename(state) if rename is not None else state, d)


# ----------------------------------------------------------------------------- scheduler configs

# diffusers beta_schedule -> our discrete schedule kind with the same table, bit for bit: IF's cosine table keeps
# its own kind name ("ddpm_cosine"); every other table is the "discrete" kind with `betas` naming it.
BETA_SCHEDULES = {"squaredcos_cap_v2": "ddpm_cosine", "scaled_linear": "discrete", "linear": "discrete"}


def read_noise_schedule(path: Path, d: dict | None = None) -> ScheduleConfig:
    """Our ScheduleConfig for the noise table of a diffusers DDPM/DDIM-style `scheduler_config.json`."""
    d = read_json(path) if d is None else d
    beta = d.get("beta_schedule", "linear")
    if d.get("trained_betas") is not None:
        raise CheckpointError(f"{path}: trained_betas (an explicit table) is not supported; use a named beta_schedule")
    if beta not in BETA_SCHEDULES:
        raise CheckpointError(f"{path}: beta_schedule={beta!r} is not supported; supported: "
                              + ", ".join(repr(k) for k in BETA_SCHEDULES))
    kind = BETA_SCHEDULES[beta]
    T = int(d.get("num_train_timesteps", 1000))
    if kind == "ddpm_cosine":
        return ScheduleConfig(kind=kind, num_train_timesteps=T)
    return ScheduleConfig(kind=kind, num_train_timesteps=T, betas=beta, beta_start=float(d.get("beta_start", 1e-4)),
                          beta_end=float(d.get("beta_end", 0.02)))


def read_ddim_scheduler(path: Path) -> dict:
    """StageConfig fields (schedule, parameterization, threshold, sampler) from a diffusers DDIMScheduler config.

    "leading" spacing with steps_offset, set_alpha_to_one, prediction_type epsilon / v_prediction and
    clip_sample (static threshold) as diffusers' DDIMScheduler reads them; anything else is refused.
    """
    d = read_json(path)
    if d.get("_class_name", "DDIMScheduler") != "DDIMScheduler":
        raise CheckpointError(f"{path}: _class_name={d['_class_name']!r}; the upscaler's scheduler is a DDIMScheduler")
    spacing = d.get("timestep_spacing", "leading")
    if spacing != "leading":
        raise CheckpointError(f"{path}: timestep_spacing={spacing!r} is not supported; we read 'leading'")
    if d.get("thresholding", False) or d.get("rescale_betas_zero_snr", False):
        raise CheckpointError(f"{path}: thresholding / rescale_betas_zero_snr are not supported for DDIM configs")
    pred = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(d.get("prediction_type", "epsilon"))
    if pred is None:
        raise CheckpointError(f"{path}: prediction_type={d['prediction_type']!r} is not supported")
    if float(d.get("clip_sample_range", 1.0)) != 1.0:
        raise CheckpointError(f"{path}: clip_sample_range={d['clip_sample_range']} is not supported (we clip to 1)")
    base = read_noise_schedule(path, d)
    schedule = dataclasses.replace(base, steps_offset=int(d.get("steps_offset", 0)),
                                   set_alpha_to_one=bool(d.get("set_alpha_to_one", True)))
    return {"schedule": schedule, "parameterization": Parameterization(kind=pred), "sampler": "ddim",
            # DDIM's clip_sample clamps x0 and keeps the model's eps (use_clipped_model_output=False)
            "threshold": "clip_x0" if d.get("clip_sample", True) else "none"}


def read_sampling_scheduler(path: Path, *, learned_variance: bool) -> dict:
    """StageConfig fields (schedule, parameterization, threshold*) from a diffusers DDPMScheduler config.

    `learned_variance`: the U-Net outputs a variance half (2x image channels). Anything we would run
    differently from diffusers is refused rather than approximated.
    """
    schedule = read_noise_schedule(path)
    d = read_json(path)
    spacing = d.get("timestep_spacing", "leading")
    if spacing != "leading":
        raise CheckpointError(f"{path}: timestep_spacing={spacing!r} is not supported; we read 'leading' "
                              "(pass steps='smart50' or an explicit list to generate() for other spacings)")
    pred = d.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise CheckpointError(f"{path}: prediction_type={pred!r} is not supported; we read 'epsilon'")
    var = d.get("variance_type", "fixed_small")
    if learned_variance and var != "learned_range":
        raise CheckpointError(f"{path}: variance_type={var!r} with a U-Net that outputs a variance half is not "
                              "supported; we read 'learned_range' (DeepFloyd IF's)")
    out = {"schedule": schedule, "parameterization": Parameterization(kind="eps", learned_variance=learned_variance)}
    if d.get("thresholding", False):
        out.update(threshold="dynamic", threshold_percentile=float(d.get("dynamic_thresholding_ratio", 0.995)),
                   threshold_max=float(d.get("sample_max_value", 1.0)))
    else:
        out["threshold"] = "static" if d.get("clip_sample", True) else "none"
    return out
