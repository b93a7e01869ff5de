"""Where we write: output folders checked before any work, and a full disk said once (which folder, how
much the write needs, how much is free, what was kept).

Every writer that must survive a full disk (training checkpoints, the published model, the embedding
cache, sample grids) catches `OSError`s with `disk_full(e)`, removes what it half wrote, and raises
`disk_full_error(...)`: a `DiskFullError` (an OSError, so the CLI prints it as one line, exit code 2).
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write ran out of space; the message names the folder, the space needed and what is kept."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def disk_full_error(folder: Path, what: str, needed: int, kept: str) -> DiskFullError:
    """The one message for a full disk: where, how much is needed and free, what survived, how to go on."""
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = 0
    return DiskFullError(errno.ENOSPC, f"no space left on the device of {folder} while writing {what}: it needs "
                         f"about {_mb(needed)} and {_mb(free)} is free; {kept}; free some space (or give another "
                         "folder) and run the same command again (with --resume for a training run)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_output_folder(path, what: str = "--out") -> Path:
    """Refuse, before any work, an output folder we could not write: a file, or under a read-only folder."""
    import os

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; give a folder path (it is created if missing)")
    probe = path
    while not probe.exists():  # the nearest folder that exists decides whether we may create the rest
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is a file, so the folder cannot be created; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {probe} is not writable (read-only or owned by another user); "
                         "choose a folder you can write to")
    return path


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, with its I/O errors as OSErrors: safetensors reports a full disk as a
    SafetensorError ("No space left on device (os error 28)"), which `disk_full` must recognise."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 -- SafetensorError; only its I/O errors are translated
        text = str(e)
        for code in DISK_FULL:
            if f"os error {code})" in text:
                raise OSError(code, text, str(path)) from None
        raise
