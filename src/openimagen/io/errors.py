"""The typed errors of reading foreign checkpoints (diffusers folders, hub downloads)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint folder or weight file that does not hold what its config (or the caller) says."""


class HubError(CheckpointError, OSError):
    """A hub id that could not be fetched (offline, gated, not found).

    An OSError too: callers that catch the errors of `from_pretrained` / `snapshot_download` keep working.
    """
