"""Random draws for diffusion: the one place that decides where and in which dtype numbers are drawn.

Every draw happens on the generator's own device (CPU unless the caller made a CUDA generator), in
float32 (int64 for `randint`), and is then moved where it is used -- as diffusers' `randn_tensor` does --
so one seed gives the same numbers on CPU and GPU, and seeded runs reproduce diffusers' IF pipelines
draw for draw. Without a generator the global RNG of the target device is used.

`RowGenerators` gives groups of batch rows their own generators: a batch of several images per prompt draws
image j of every prompt from a generator seeded with seed + j (the common convention), so each image is
reproducible alone (`--seed S+j`, one image). With one group it draws exactly what one generator would.
"""
from __future__ import annotations

import torch
from torch import Tensor


class RowGenerators:
    """One generator per group of batch rows: a draw of shape (B, ...) fills each group's rows from its own
    generator, (len(rows), ...) numbers at a time, in group order."""

    def __init__(self, groups: list[tuple[torch.Generator, list[int]]]):
        self.groups = groups
        self.rows = sum(len(r) for _, r in groups)
        self.device = groups[0][0].device

    @classmethod
    def per_image(cls, seed: int, prompts: int, images: int, device="cpu") -> "RowGenerators":
        """Rows ordered prompt-major (p * images + j): image j of every prompt draws from seed + j."""
        return cls([(torch.Generator(device).manual_seed(seed + j), [p * images + j for p in range(prompts)])
                    for j in range(images)])

    def draw(self, fn, shape, **kw) -> Tensor:
        shape = tuple(shape)
        if not shape or shape[0] != self.rows:
            raise ValueError(f"a draw of shape {shape} from generators for {self.rows} batch rows")
        if len(self.groups) == 1:
            return fn(shape, generator=self.groups[0][0], device=self.device, **kw)
        parts = [fn((len(rows), *shape[1:]), generator=g, device=self.device, **kw) for g, rows in self.groups]
        out = torch.empty((self.rows, *shape[1:]), dtype=parts[0].dtype, device=self.device)
        for (_, rows), part in zip(self.groups, parts):
            out[rows] = part
        return out


def _draw_device(generator, device) -> torch.device:
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
    if isinstance(generator, RowGenerators):
        return _moved(generator.draw(torch.randn, shape, dtype=torch.float32), device, like)
    x = torch.randn(shape, generator=generator, device=_draw_device(generator, where), dtype=torch.float32)
    return _moved(x, device, like)


def rand(shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Uniform [0, 1) numbers of `shape`, float32, moved to `device` (None: stays where drawn)."""
    if isinstance(generator, RowGenerators):
        return _moved(generator.draw(torch.rand, shape, dtype=torch.float32), device, None)
    x = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=torch.float32)
    return _moved(x, device, None)


def randint(high: int, shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Integers in [0, high) of `shape`, int64, moved to `device` (None: stays where drawn)."""
    x = torch.randint(0, high, shape, generator=generator, device=_draw_device(generator, device))
    return _moved(x, device, None)
