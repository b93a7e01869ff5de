"""Generation options resolved per stage: one value or a list per stage, sizes, timestep lists, images.

Everything here turns what a caller typed into concrete per-stage values (or a ValueError naming the
argument and the fix); nothing here samples.
"""
from __future__ import annotations

from torch import Tensor

from .diffusion import as_timesteps, respaced_timesteps


def per_stage(value, n: int, name: str, total: int | None = None) -> list:
    """One entry per stage that runs (n); a list for every stage of the cascade (total) is cut to n."""
    if isinstance(value, (list, tuple)):
        if total is not None and len(value) == total:
            return list(value)[:n]
        if len(value) != n:
            whole = "" if total in (None, n) else f" or one per stage of the cascade ({total})"
            raise ValueError(f"{name} has {len(value)} entries but {n} stage(s) run; give one per stage run{whole}")
        return list(value)
    return [value] * n


def stage_sizes(stages, height, width) -> list[tuple[int, int]]:
    """(h, w) per stage: a single int sizes the last stage; lists give one entry (or None) per stage."""
    n = len(stages)

    def each(v, name):
        if isinstance(v, (list, tuple)):
            return per_stage(v, n, name)
        return [None] * (n - 1) + [v]

    out = []
    for stage, h, w in zip(stages, each(height, "height"), each(width, "width")):
        for name, v in (("height", h), ("width", w)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 8):
                raise ValueError(f"{name} must be a whole number of pixels >= 8, got {v!r}")
        out.append((h or stage.resolution, w or stage.resolution))
    return out


def timesteps(stage, spec) -> Tensor:
    """A stage's descending sampling times from a count, a named list ("smart50") or an explicit list."""
    if isinstance(spec, bool):
        raise ValueError(f"steps must be a positive integer, a named list or a timestep list, got {spec!r}")
    if isinstance(spec, str) and spec.isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"steps must be a positive integer, got {spec!r}")
        return stage.schedule.timesteps(spec)
    if isinstance(spec, str):
        if not stage.schedule.discrete:
            raise ValueError(f"named timestep list {spec!r} needs a discrete schedule (ddpm_cosine); "
                             "give a number of steps instead")
        return respaced_timesteps(spec, stage.schedule.config.num_train_timesteps)
    if isinstance(spec, (list, tuple, Tensor)):
        return as_timesteps(stage.schedule, spec)
    raise ValueError(f"steps must be a positive integer, a named list or a timestep list, got {spec!r}")


def check_image(image: Tensor, n_prompts: int, B: int) -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a (B, 3, H, W) tensor in [-1, 1], got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    if image.shape[0] == n_prompts:
        return image.float().repeat_interleave(B // n_prompts, dim=0)
    if image.shape[0] != B:
        raise ValueError(f"image has {image.shape[0]} rows for {n_prompts} prompts; give one image per prompt")
    return image.float()
