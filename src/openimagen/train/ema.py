"""Exponential moving average of a network's weights: the weights we sample from and ship.

    theta_ema <- beta * theta_ema + (1 - beta) * theta

With `warmup`, beta_n = min(beta, (1 + n) / (10 + n)) after n updates (the schedule of TensorFlow's
ExponentialMovingAverage with num_updates): early on the average follows the fast-moving weights
instead of remembering the random initialisation for thousands of steps, which matters for short
CPU runs. The EMA copy is a plain frozen module in fp32, so `Cascade.save_pretrained` can write it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        beta = self.current_decay()
        ema_p = list(self.model.parameters())
        new_p = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_p)]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - beta)  # e + (1 - beta) * (p - e)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = int(num_updates)
