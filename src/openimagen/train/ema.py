"""Exponential moving average of a network's weights: the weights we sample from and ship.

    theta_ema <- beta * theta_ema + (1 - beta) * theta

With `warmup`, beta_n = min(beta, (1 + n) / (10 + n)) after n updates (the schedule of TensorFlow's
ExponentialMovingAverage with num_updates): early on the average follows the fast-moving weights
instead of remembering the random initialisation for thousands of steps, which matters for short
CPU runs. The EMA copy is a plain frozen module in fp32, so `Cascade.save_pretrained` can write it.
With `names` (a LoRA fine-tune: only adapters train) the EMA keeps fp32 copies of those parameters
alone, not a second copy of the frozen network.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, names: list[str] | None = None):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.names = None if names is None else list(names)
        if self.names is None:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
        else:
            self.model, params = None, dict(model.named_parameters())
            self.shadow = {n: params[n].detach().float().clone() for n in self.names}
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        beta = self.current_decay()
        if self.model is None:
            params = dict(model.named_parameters())
            ema_p = [self.shadow[n] for n in self.names]
            torch._foreach_lerp_(ema_p, [params[n].detach().float() for n in self.names], 1.0 - beta)
            self.num_updates += 1
            return
        ema_p = list(self.model.parameters())
        new_p = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_p)]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - beta)  # e + (1 - beta) * (p - e)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict() if self.model is not None else dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        if self.model is not None:
            self.model.load_state_dict(state)
        else:
            if set(state) != set(self.names):
                raise ValueError(f"EMA state holds {sorted(set(state) ^ set(self.names))[:3]} that the adapters do not")
            for n in self.names:
                self.shadow[n].copy_(state[n])
        self.num_updates = int(num_updates)
