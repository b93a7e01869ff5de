"""Find and load a model from what a user typed: nothing, a folder, or a DeepFloyd IF hub id."""
from __future__ import annotations

from pathlib import Path

import torch

from .io.hub import local_path
from .cascade import Cascade, ModelFolderError

BUNDLED = Path(__file__).parent / "assets" / "shapes-cascade"


def bundled_model_path() -> Path:
    if not (BUNDLED / "cascade.json").is_file():
        raise ModelFolderError(
            f"the bundled model is missing from {BUNDLED}; reinstall openimagen or pass --model DIR"
        )
    return BUNDLED


def is_deepfloyd(name_or_path: str) -> bool:
    """A diffusers IF folder, or a hub id (io/hub.py's rule): only IF checkpoints come from the hub."""
    p = local_path(name_or_path)
    if p is None:
        return True
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "unet").is_dir())


def load_model(model: str | None, *, sr: str | list[str] | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
               lora=()):
    """Return an object with `.generate(prompts, ...)`: an openimagen Cascade or a DeepFloyd IF cascade.
    lora: "PATH[:scale]" adapters to put on it (lora.py), each on the stage it was made for."""
    cascade = _load(model, sr=sr, device=device, dtype=dtype)
    if lora:
        from .lora import apply_loras

        apply_loras(cascade, lora)
    return cascade


def _load(model: str | None, *, sr: str | list[str] | None, device, dtype):
    if model is None:
        if sr is not None:
            raise ValueError("--sr needs --model (a DeepFloyd IF stage I model)")
        return Cascade.from_pretrained(bundled_model_path(), device=device, dtype=dtype)
    path = Path(model)
    if path.is_dir() and (path / "cascade.json").is_file():
        return _our_cascade(path, sr, device, dtype)
    if path.is_dir() and (path / "model" / "cascade.json").is_file():  # a training run folder
        return _our_cascade(path / "model", sr, device, dtype)
    if path.is_dir() and (path / "adapters").is_dir() and (path / "train_config.json").is_file():
        return _lora_run(path, sr, device, dtype)  # a LoRA fine-tune: its starting model + its adapters
    if is_deepfloyd(model):
        from .checkpoints.deepfloyd_if import load_if_cascade
        from .checkpoints.sd_upscaler import load_upscaler_stage, names_upscaler

        if names_upscaler(model):  # the SD x4 upscaler alone: a one-stage cascade that enlarges a given image
            if sr is not None:
                raise ValueError(f"--model {model} is an upscaler; it takes no --sr (give it as the last --sr of an IF "
                                 "cascade instead)")
            stage = load_upscaler_stage(model, device=device, dtype=dtype)
            return Cascade(stage.text_encoder, [stage])

        return load_if_cascade(model, sr=sr, device=device, dtype=dtype)
    if not path.exists():
        raise FileNotFoundError(
            f"--model {model}: no such folder; pass a folder written by `openimagen train` or save_pretrained, "
            "or a DeepFloyd IF hub id such as DeepFloyd/IF-I-XL-v1.0"
        )
    raise ModelFolderError(
        f"{model} is neither an openimagen model (cascade.json) nor a DeepFloyd IF checkpoint "
        "(model_index.json, unet/config.json + unet/diffusion_pytorch_model*.safetensors, scheduler/, "
        "text_encoder/, tokenizer/; image_noising_scheduler/ for stage II)"
    )


def _our_cascade(path: Path, sr, device, dtype) -> Cascade:
    if sr is not None:
        raise ValueError("--sr is for DeepFloyd IF stage II models; an openimagen cascade already holds its SR stages")
    return Cascade.from_pretrained(path, device=device, dtype=dtype)


def _lora_run(path: Path, sr, device, dtype):
    """The model a LoRA run started from (train_config.json's init), with the run's adapters on it."""
    from .config import load_json
    from .lora import apply_loras

    if sr is not None:
        raise ValueError(f"--sr: {path} is a fine-tuning run; its train_config.json already names the model")
    init = load_json(path / "train_config.json").get("init") or {}
    model = init.get("model")
    if not model:
        raise ModelFolderError(f"{path} has adapters/ but its train_config.json names no init model")
    cascade = load_model(None if model == "bundled" else model, sr=init.get("sr"), device=device, dtype=dtype)
    apply_loras(cascade, [str(path / "adapters")])
    return cascade
