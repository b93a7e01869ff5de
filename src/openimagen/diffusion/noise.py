"""Random draws for diffusion: the one place that decides where and in which dtype numbers are drawn.

Every draw happens on the generator's own device (CPU unless the caller made a CUDA generator), in
float32 (int64 for `randint`), and is then moved where it is used -- as diffusers' `randn_tensor` does --
so one seed gives the same numbers on CPU and GPU, and seeded runs reproduce diffusers' IF pipelines
draw for draw. Without a generator the global RNG of the target device is used.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device if device is not None else "cpu")


def _moved(x: Tensor, device, like: Tensor | None) -> Tensor:
    if like is not None:
        return x.to(like)  # like's device and dtype
    return x if device is None else x.to(device)


def randn(shape, generator: torch.Generator | None = None, device=None, like: Tensor | None = None) -> Tensor:
    """Standard normal noise of `shape`, moved to `device` (None: stays where drawn), or to `like`'s device
    and dtype when `like` is given."""
    where = like.device if like is not None else device
    x = torch.randn(shape, generator=generator, device=_draw_device(generator, where), dtype=torch.float32)
    return _moved(x, device, like)


def rand(shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Uniform [0, 1) numbers of `shape`, float32, moved to `device` (None: stays where drawn)."""
    x = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=torch.float32)
    return _moved(x, device, None)


def randint(high: int, shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Integers in [0, high) of `shape`, int64, moved to `device` (None: stays where drawn)."""
    x = torch.randint(0, high, shape, generator=generator, device=_draw_device(generator, device))
    return _moved(x, device, None)
