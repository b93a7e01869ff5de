"""`openimagen merge-stages`: join the stages of one cascade trained by separate runs into one model folder.

The stages of a cascade train independently: the base on captions, each super-resolution stage on real
images shrunk and noise-augmented, never on another stage's samples (Imagen §2.5). So one cascade can be
trained as several runs at once (`train --train-stages 0` on one core or machine, `--train-stages 1,2` on
another), each a complete, resumable run of its own. This module checks that the runs are shares of the
same cascade, all finished, each stage trained by exactly one of them, and copies every stage's weights
from the run that trained it:

    merge_stages(["runs/base", "runs/sr"], "runs/cascade/model")
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..config import from_dict, to_dict
from . import checkpoint as ckpt
from .config import TrainConfig


class MergeError(ValueError):
    """The runs cannot be merged; the message names the run and what to do."""


def _run(folder: Path) -> tuple[dict, list[int]]:
    """(its config without train_stages, the stages it trained to the end) of one run folder."""
    cfg_path = folder / "train_config.json"
    if not cfg_path.is_file():
        raise MergeError(f"{folder} is not a training run (no train_config.json); give the folders that "
                         "`openimagen train --out` wrote")
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg = from_dict(TrainConfig, data, where=str(cfg_path))
    if cfg.init is not None:
        raise MergeError(f"{folder} is a fine-tune (--init); merge-stages joins the shares of a fresh cascade "
                         "trained with --train-stages")
    if not (folder / "model" / "cascade.json").is_file():
        raise MergeError(f"{folder} has no model/ yet: it has not reached its first checkpoint; let it run, or "
                         f"continue it with `openimagen train ... --out {folder} --resume`")
    found = ckpt.find_checkpoint(folder / "checkpoints")
    state = ckpt.read_state(found) if found is not None else None
    done = list(state["stage_steps"]) if state else [0] * len(cfg.stages)
    trained = [k for k in range(len(cfg.stages)) if cfg.trains(k)]
    for k in trained:
        if done[k] < cfg.stages[k].steps:
            raise MergeError(f"{folder} has trained stage {k} for {done[k]} of its {cfg.stages[k].steps} steps; "
                             f"finish it first: `openimagen train ... --out {folder} --resume`")
    shared = to_dict(cfg)
    shared.pop("train_stages")
    return shared, trained


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path or 'the config'}: {a!r} vs {b!r}"


def merge_stages(runs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write `out` (a model folder: what `generate --model` takes) from the runs' trained stages."""
    runs = [Path(r) for r in runs]
    out = Path(out)
    if len(runs) < 2:
        raise MergeError("give at least two run folders, each trained with --train-stages on part of the cascade")
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not empty; choose a new folder for the merged model (or delete it)")
    owner: dict[int, Path] = {}
    first, shared = runs[0], None
    for run in runs:
        config, trained = _run(run)
        if shared is None:
            shared = config
        elif config != shared:
            raise MergeError(f"{run} is not a share of the same cascade as {first}: they differ at "
                             f"{_first_difference(shared, config)}; train every share from the same preset/config")
        for k in trained:
            if k in owner:
                raise MergeError(f"stage {k} was trained by both {owner[k]} and {run}; give each stage's run once")
            owner[k] = run
    missing = [k for k in range(len(shared["stages"])) if k not in owner]
    if missing:
        raise MergeError(f"no run trained stage(s) {missing}; train them with `openimagen train ... "
                         f"--train-stages {','.join(map(str, missing))}` and merge that run too")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        shutil.copy2(first / "model" / "cascade.json", tmp / "cascade.json")  # text encoder + stage list: shared
        for k, run in sorted(owner.items()):
            shutil.copytree(run / "model" / f"stage_{k}", tmp / f"stage_{k}")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
