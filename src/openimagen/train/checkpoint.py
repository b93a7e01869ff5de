"""Crash-safe training checkpoints: a SIGKILL at any instant leaves the last good one intact.

Layout under `out_dir/checkpoints/`:
    latest                       text file naming the newest checkpoint folder, e.g. "step-0000500"
    step-0000500/
        state.json               counters, data position, EMA update counts, the TrainConfig
        stage_K/model.safetensors    raw weights           (fp32)
        stage_K/ema.safetensors      EMA weights
        stage_K/optim.safetensors    optimizer tensors, flattened to "state.<param>.<name>"
        stage_K/optim.json           optimizer param groups and non-tensor state
Nothing is pickled: optimizer state is tensors + JSON.

Why it survives a kill wherever it lands:
1. everything is written into `.tmp-step-...`, each file fsynced, `state.json` last;
2. the folder is renamed into place (`os.replace`, atomic on POSIX) and the parent fsynced;
3. `latest` is rewritten by write-tmp + fsync + `os.replace`;
4. old checkpoints are first renamed to `.trash-...` (atomic), then deleted,
so a `step-*` folder is always complete, and `latest` names a complete folder or, if it is stale or
missing, `find_checkpoint` falls back to the newest `step-*` folder that has a readable state.json.
Leftover `.tmp-*` / `.trash-*` folders are ignored and swept away.

A full disk (ENOSPC, EDQUOT) while writing raises `DiskFullError`: the half-written folder is removed,
the previous checkpoint stays as it was, and the message names the folder and the space the write needs.
The named `faults.point`s between the steps let tests kill the process (or fill the disk) at each one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from .. import faults
from ..io.disk import disk_full, disk_full_error, save_safetensors

LATEST = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, metadata={"format": "pt"})
    _fsync_file(path)
    faults.point("checkpoint.file", str(path))


def tensor_bytes(*dicts) -> int:
    """Bytes the tensors of (nested) dicts take on disk as safetensors (without the small headers)."""
    total = 0
    for d in dicts:
        for v in d.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, dict):
                total += tensor_bytes(v)
    return total


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_text(tmp, text)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------------------------
# optimizer state <-> tensors + JSON


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> ({"state.<pid>.<name>": tensor}, JSON-ready meta)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    tuples = sorted({k for g in sd["param_groups"] for k, v in g.items() if isinstance(v, tuple)})
    return tensors, {"param_groups": groups, "scalars": scalars, "tuple_keys": tuples}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = [{k: (tuple(v) if k in meta["tuple_keys"] else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------
# save


def save_checkpoint(root: str | os.PathLike, step: int, state: dict, stages: list[dict], keep: int) -> Path:
    """Write one checkpoint atomically; `stages[k]` = {"model": sd, "ema": sd, "optim": optimizer sd}.

    Returns the final folder. Call on the main process only. A full disk raises `DiskFullError` with
    the half-written folder removed and every earlier checkpoint untouched.
    """
    root = Path(root)
    name = f"step-{step:07d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        return _save_checkpoint(root, name, tmp, state, stages, keep)
    except OSError as e:
        if not disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        previous = find_checkpoint(root)
        kept = (f"the previous checkpoint {previous} is intact" if previous is not None
                else "no earlier checkpoint exists")
        raise disk_full_error(root, f"checkpoint {name}", tensor_bytes(*stages), kept) from None


def _save_checkpoint(root: Path, name: str, tmp: Path, state: dict, stages: list[dict], keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for k, st in enumerate(stages):
        d = tmp / f"stage_{k}"
        d.mkdir()
        _save_tensors(st["model"], d / "model.safetensors")
        _save_tensors(st["ema"], d / "ema.safetensors")
        tensors, meta = flatten_optimizer(st["optim"])
        _save_tensors(tensors, d / "optim.safetensors")
        _write_text(d / "optim.json", json.dumps(meta))
        _fsync_dir(d)
    _write_text(tmp / "state.json", json.dumps(state, indent=1, sort_keys=True))  # last: marks the folder whole
    _fsync_dir(tmp)
    faults.point("checkpoint.rename", str(final))
    if final.exists():  # a re-save of the same step (e.g. a resumed run that ends where it started)
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    faults.point("checkpoint.latest", str(root / LATEST))
    atomic_write_text(root / LATEST, name + "\n")
    prune_checkpoints(root, keep)
    return final


def _remove(path: Path) -> None:
    """Delete a folder so that no half-deleted `step-*` folder is ever visible."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint folders (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    root = Path(root)
    latest = _read_latest(root)
    ckpts = list_checkpoints(root)
    for _, p in ckpts[: max(0, len(ckpts) - keep)]:
        if latest is None or p.resolve() != latest.resolve():
            _remove(p)
    for p in root.iterdir():  # leftovers of killed writes and deletes (ours or an earlier process's)
        if p.name.startswith((".tmp-step-", ".trash-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# load


def _read_latest(root: Path) -> Path | None:
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return root / name if STEP_DIR.match(name) else None


def _readable(path: Path) -> dict | None:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def read_state(path: str | os.PathLike) -> dict | None:
    """A checkpoint's state.json (counters, data position, the TrainConfig), None if unreadable."""
    return _readable(Path(path))


def find_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder to resume from: what `latest` names, else the newest complete `step-*` folder."""
    root = Path(root)
    latest = _read_latest(root)
    if latest is not None and latest.is_dir() and _readable(latest) is not None:
        return latest
    for _, p in reversed(list_checkpoints(root)):
        if _readable(p) is not None:
            return p
    return None


def load_checkpoint(path: str | os.PathLike, num_stages: int) -> tuple[dict, list[dict]]:
    """(state, [{"model": sd, "ema": sd, "optim": optimizer sd}, ...]) from a checkpoint folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    state = _readable(path)
    if state is None:
        raise ValueError(f"checkpoint {path} has no readable state.json; delete it to resume from an older one")
    stages = []
    for k in range(num_stages):
        d = path / f"stage_{k}"
        try:
            stages.append({
                "model": load_file(str(d / "model.safetensors")),
                "ema": load_file(str(d / "ema.safetensors")),
                "optim": unflatten_optimizer(load_file(str(d / "optim.safetensors")),
                                             json.loads((d / "optim.json").read_text(encoding="utf-8"))),
            })
        except (OSError, ValueError, SafetensorError) as e:
            raise ValueError(f"checkpoint {path} is damaged at {d.name} ({e}); delete it to resume from an older one") from None
    return state, stages


# ----------------------------------------------------------------------------------------------
# the shipped model folder


def publish_model(cascade, out_dir: str | os.PathLike, name: str = "model") -> Path:
    """`cascade.save_pretrained(out_dir/name)` without ever leaving a half-written `name` folder."""
    out_dir = Path(out_dir)
    final = out_dir / name
    tmp = out_dir / f".tmp-{name}-{os.getpid()}"
    for old in out_dir.glob(f".tmp-{name}-*"):  # ours, or left by a killed process
        shutil.rmtree(old, ignore_errors=True)
    try:
        cascade.save_pretrained(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
    except OSError as e:
        if not disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the model folder {final} is unchanged" if final.exists() else f"{final} is not written yet"
        raise disk_full_error(out_dir, f"the model folder {name}/", tensor_bytes(cascade.state_dict()), kept) from None
    faults.point("model.publish", str(final))
    if final.exists():
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(out_dir)
    return final
