"""What stops a training run cleanly instead of corrupting it: a NaN/inf loss (before the update), a full
disk (one message naming the folder), and `--resume` on a folder that holds no run."""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..io.disk import DiskFullError, disk_full, disk_full_error
from .config import TrainConfig


class NonFiniteLossError(ValueError):
    """A step's loss was NaN or inf; the weights were not updated and the run stopped (the message says why)."""


def nan_message(cfg: TrainConfig, k: int, step: int, stage_step: int, loss: Tensor, last: Path | None) -> str:
    kept = (f"the last good checkpoint {last} is kept (resume from it with --resume)" if last is not None
            else "no checkpoint was written yet")
    return (f"stage {k}, step {step + 1} (step {stage_step + 1} of the stage): the loss is {loss.item()}; the run "
            f"stopped before the update, so no weight saw it, and {kept}; try a lower learning rate "
            f"(--set optim.lr={cfg.optim.lr / 10:g}), full fp32 (--set mixed_precision=no), or gradient clipping "
            "(--set optim.grad_clip=1.0); check the data for broken images")


def writing(folder: Path, what: str, write) -> None:
    """Run `write()`; a full disk becomes one message naming the folder (nothing else is affected)."""
    try:
        write()
    except OSError as e:
        if not disk_full(e) or isinstance(e, DiskFullError):
            raise
        raise disk_full_error(folder, what, 1 << 20, "the checkpoints are intact") from None


def holds_run(folder: Path) -> bool:
    """A run started there (killed before its first checkpoint, maybe), or `openimagen embed` prepared it."""
    return ((folder / "train_config.json").is_file() or (folder / "checkpoints").is_dir()
            or (folder / "embeddings").is_dir())


def runs_near(out: Path) -> str:
    """Where the runs are: the folders beside `out` that hold one (a typo in --out is the usual cause)."""
    parent = out.parent if out.parent.is_dir() else Path(".")
    runs = sorted(p.name for p in parent.iterdir() if p.is_dir() and holds_run(p))
    if not runs:
        return f"no folder in {parent} holds one either"
    return f"the folders in {parent} that hold runs are {runs[:10]}"
