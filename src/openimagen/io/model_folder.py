"""Our model folder format: `cascade.json` plus one `stage_K/{config.json, model.safetensors}` per stage.

The config beside the weights is all that is needed to rebuild a stage (no flags, no pickles); loading
builds the U-Net on the meta device and checks every key against the weights before assigning them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import from_dict, load_json, save_json, to_dict
from ..prompt_expansion import check_kind as check_expansion
from .disk import save_safetensors
from ..stage import Stage, StageConfig, unet_class
from ..text import TextEncoder, text_encoder_from_spec

FORMAT = "openimagen-cascade"


class ModelFolderError(ValueError):
    """A model folder is missing a file or holds a corrupt one."""


def save(folder: str | os.PathLike, text_encoder: TextEncoder | None, stages: list[Stage], *,
         prompt_expansion: str | None = None) -> None:
    """Write the folder; each weights file is written beside and renamed, so it is whole or absent.
    `prompt_expansion` (prompt_expansion.py) is written to cascade.json only when set."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, stage in enumerate(stages):
        d = folder / f"stage_{k}"
        d.mkdir(exist_ok=True)
        save_json(to_dict(stage.config), d / "config.json")
        state = {n: t.detach().contiguous() for n, t in stage.unet.state_dict().items()}
        tmp = d / "model.safetensors.tmp"
        save_safetensors(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, d / "model.safetensors")
        names.append(d.name)
    spec = text_encoder.spec() if text_encoder is not None else None
    index = {"format": FORMAT, "version": 1, "text_encoder": spec, "stages": names}
    if prompt_expansion is not None:
        index["prompt_expansion"] = prompt_expansion
    save_json(index, folder / "cascade.json")


def load(folder: str | os.PathLike, *, text_encoder: TextEncoder | None = None, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None) -> tuple[TextEncoder | None, list[Stage]]:
    """(text encoder, stages) of a folder written by `save`; `text_encoder` overrides the saved one."""
    text_encoder, stages, _ = load_with_index(folder, text_encoder=text_encoder, device=device, dtype=dtype)
    return text_encoder, stages


def load_with_index(folder: str | os.PathLike, *, text_encoder: TextEncoder | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """`load`, plus cascade.json's checked contents (e.g. its "prompt_expansion"), read once."""
    folder = Path(folder)
    index, index_path = read_index(folder)
    stages = [_load_stage(_inside(folder, name, index_path), device, dtype) for name in index["stages"]]
    if text_encoder is None and index.get("text_encoder") is not None:
        text_encoder = text_encoder_from_spec(index["text_encoder"])
    return text_encoder, stages, index


def read_index(folder: Path) -> tuple[dict, Path]:
    """(cascade.json's contents, its path), checked: the format tag, the stage names, a known prompt expansion."""
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist; pass a folder written by save_pretrained or `openimagen train`")
    index_path = folder / "cascade.json"
    if not index_path.is_file():
        raise ModelFolderError(f"{folder} has no cascade.json: it is not an openimagen model folder")
    index = load_json(index_path)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ModelFolderError(f"{index_path} is not an openimagen cascade index (format={got!r})")
    names = index.get("stages")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFolderError(f"{index_path}: \"stages\" must be a list of stage folder names, e.g. "
                               f"[\"stage_0\", \"stage_1\"]; got {names!r}")
    try:
        check_expansion(index.get("prompt_expansion"))
    except ValueError as e:
        raise ModelFolderError(f"{index_path}: {e}; this openimagen may be older than the model") from None
    return index, index_path


def _inside(folder: Path, name: str, index_path: Path) -> Path:
    """folder/name, refused unless it stays inside the model folder (no "../", no absolute path, no link out)."""
    d = folder / name
    root = folder.resolve()
    if Path(name).is_absolute() or not d.resolve().is_relative_to(root) or d.resolve() == root:
        raise ModelFolderError(f"{index_path} names the stage folder {name!r}, which is outside the model folder; "
                               "a model folder may only name its own subfolders (stage_0, stage_1, ...)")
    return d


def check_finite(state: dict, weights) -> None:
    """Refuse weights holding NaN or inf (a garbled download or disk): they would draw a wrong image silently."""
    for key, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise ModelFolderError(f"{weights} holds {bad} NaN/inf value(s) in {key!r}: the file is damaged; "
                                   "re-download or re-save it")


# Below this weight-file size a U-Net is built on the CPU (random init ~30 ns per parameter: 0.1 s for the
# bundled 3.5M-parameter base) rather than on the meta device, whose first use imports torch's meta
# registrations and decompositions (~2 s on the shared CPU, measured 2026-12-01; issue 17's cold start).
META_ABOVE_BYTES = 64 * 2**20


def _load_stage(d: Path, device, dtype) -> Stage:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not d.is_dir():
        raise ModelFolderError(f"stage folder {d} is missing; the model folder is incomplete")
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file():
        raise ModelFolderError(f"{cfg_path} is missing; the stage cannot be built without it")
    if not weights.is_file():
        raise ModelFolderError(f"{weights} is missing; copy the weights back or re-save the model")
    config = from_dict(StageConfig, load_json(cfg_path), where=str(cfg_path))
    if weights.stat().st_size > META_ABOVE_BYTES:
        with torch.device("meta"):  # no time spent on random init that the weights overwrite
            unet = unet_class(config.unet)(config.unet)
    else:  # small: init on the CPU beats the meta device's ~2 s first-use import; global RNG left as it was
        with torch.random.fork_rng(devices=[]):
            unet = unet_class(config.unet)(config.unet)
    stage = Stage(config, unet)
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights} is corrupt or not a safetensors file ({e}); re-download or re-save it") from None
    check_finite(state, weights)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    expected = stage.unet.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (config: {tuple(expected[k].shape)})" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ModelFolderError(f"{weights} does not match {cfg_path}: wrong shapes {wrong[:3]}; the weights belong to "
                               "another configuration: restore the config.json saved with them")
    result = stage.unet.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelFolderError(
            f"{weights} does not match {cfg_path}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    # Invariant: every U-Net keeps all of its state in the state dict (no non-persistent buffers).
    assert not any(b.is_meta for b in stage.unet.buffers()), "a U-Net buffer is not saved in its weights"
    return stage.to(device).eval()
