"""Noise schedules: how much signal and noise `x_t = alpha_t * x0 + sigma_t * eps` holds at each time t.

Variance preserving throughout: `alpha_t**2 + sigma_t**2 = 1` and `logsnr(t) = log(alpha_t**2 / sigma_t**2)`.
Every schedule answers the same five questions (the `Schedule` protocol below); samplers, losses and
guidance ask nothing else, so a new schedule is one small class.

Kinds
- "cosine"      continuous t in [0, 1]. Imagen's cosine schedule in log-SNR form, logsnr(t) = -2 log tan(pi t / 2)
                (Nichol & Dhariwal 2021 without the offset), with t mapped affinely so that logsnr(0) = logsnr_max
                and logsnr(1) = logsnr_min exactly (the clipping of Kingma et al. 2021 / Hoogeboom et al. 2023).
- "linear"      continuous t in [0, 1]. VDM's beta-linear schedule (Kingma et al. 2021, appendix):
                logsnr(t) = -log(expm1(1e-4 + 10 t^2)), clamped to [logsnr_min, logsnr_max].
- "ddpm_cosine" discrete t in {0, ..., T-1}. The `squaredcos_cap_v2` table DeepFloyd IF was trained with:
                beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999), abar(s) = cos((s + 0.008)/1.008 * pi/2)^2,
                betas rounded to float32 and cumulated in float32 exactly as diffusers' DDPMScheduler does,
                so that IF checkpoints see the noise levels they were trained on.
- "discrete"    discrete t in {0, ..., T-1} from any beta table `betas` (BETA_TABLES): "squaredcos_cap_v2"
                (the same table as "ddpm_cosine"), "scaled_linear" (betas = linspace(sqrt(b0), sqrt(b1))^2,
                Stable Diffusion's; ldm's "linear") or "linear" (linspace(b0, b1), DDPM's), with
                `beta_start`/`beta_end`. One class for every table: `DiscreteSchedule`.
                `steps_offset` shifts "leading" timesteps (diffusers' steps_offset: the x4 upscaler's 963..1);
                `set_alpha_to_one=False` makes DDIM's last step land on alphas_cumprod[0] instead of the clean
                state, as diffusers' DDIMScheduler does (the x4 upscaler's config).

Shift (continuous kinds): `logsnr_shift` moves the whole curve, logsnr(t) = clamp(raw(t) + shift) --
Hoogeboom et al. 2023 ("simple diffusion") shift by 2 log(64 / resolution) so that a larger image, whose
neighbouring pixels share more information, still gets destroyed at the same t. A negative shift does the
opposite, for images with even more redundancy than natural 64 px photographs (why the shapes base uses -3:
docs/decisions.md#logsnr-shift).

Times are float tensors in the schedule's own units (see docs/architecture.md); larger t is noisier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from .noise import rand, randint

KINDS = ("cosine", "linear", "ddpm_cosine", "discrete")
BETA_TABLES = ("squaredcos_cap_v2", "scaled_linear", "linear")
_OMIT = {"omit_default": True}  # config.OMIT_DEFAULT


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "cosine"
    num_train_timesteps: int = 1000   # discrete: table length T; continuous: only sets the VLB step 1/T in losses
    logsnr_min: float = -20.0         # continuous kinds only: the noisiest end, t = 1
    logsnr_max: float = 20.0          # continuous kinds only: the cleanest end, t = 0
    logsnr_shift: float = 0.0         # continuous kinds only: added to logsnr(t) before clamping (see below)
    # Discrete-table fields (issue 13), left out of the JSON at their defaults (config.py OMIT_DEFAULT; diffusion/
    # imports nothing of ours, so the key is spelled here).
    betas: str = field(default="squaredcos_cap_v2", metadata=_OMIT)  # "discrete" only: the table (BETA_TABLES)
    beta_start: float = field(default=0.0001, metadata=_OMIT)          # "discrete" linear tables only
    beta_end: float = field(default=0.02, metadata=_OMIT)
    steps_offset: int = field(default=0, metadata=_OMIT)    # added to "leading" timesteps (diffusers' steps_offset)
    set_alpha_to_one: bool = field(default=True, metadata=_OMIT)  # False: DDIM's last step lands on alphas_cumprod[0]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}; choose one of {list(KINDS)}")
        if self.kind == "discrete" and self.betas not in BETA_TABLES:
            raise ValueError(f"unknown beta table {self.betas!r}; choose one of {list(BETA_TABLES)}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start ({self.beta_start}) < beta_end ({self.beta_end}) < 1")
        if int(self.steps_offset) != self.steps_offset or self.steps_offset < 0:
            raise ValueError(f"steps_offset must be a whole number >= 0, got {self.steps_offset!r}")
        if int(self.num_train_timesteps) != self.num_train_timesteps or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        if self.logsnr_shift and self.kind in ("ddpm_cosine", "discrete"):
            raise ValueError("logsnr_shift applies to the continuous kinds ('cosine', 'linear') only")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max}); swap them"
            )

    @property
    def discrete(self) -> bool:
        return self.kind in ("ddpm_cosine", "discrete")


class Schedule(Protocol):
    config: ScheduleConfig
    discrete: bool

    def logsnr(self, t: Tensor) -> Tensor: ...
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]: ...
    def timesteps(self, n: int, spacing: str = ...) -> Tensor: ...
    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor: ...
    def model_time(self, t: Tensor) -> Tensor: ...


# ----------------------------------------------------------------------------------------------------------
# Continuous schedules: everything follows from logsnr(t)
# ----------------------------------------------------------------------------------------------------------

class _ContinuousSchedule:
    discrete = False

    def __init__(self, config: ScheduleConfig):
        self.config = config

    def _raw_logsnr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def logsnr(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        # float64 keeps tan/expm1 accurate near the clip ends (MPS has no float64; float32 is ~1e-3 off there).
        wide = torch.float32 if t.device.type == "mps" else torch.float64
        lam = self._raw_logsnr(t.to(wide)) + self.config.logsnr_shift
        return lam.clamp(self.config.logsnr_min, self.config.logsnr_max).float()

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lam = self.logsnr(t)
        # alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr): both accurate at either extreme.
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def timesteps(self, n: int, spacing: str = "uniform") -> Tensor:
        if spacing != "uniform":
            raise ValueError(f"continuous schedules support spacing='uniform' only, got {spacing!r}")
        if int(n) != n or n < 1:
            raise ValueError(f"number of steps must be a positive integer, got {n!r}")
        # (n,) 1, 1 - 1/n, ..., 1/n; the sampler's step after the last one goes to the clean state.
        return torch.linspace(1.0, 0.0, int(n) + 1, dtype=torch.float64)[:-1].float()

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return rand(batch, generator, device)

    def model_time(self, t: Tensor) -> Tensor:
        return t * 1000.0  # the same sinusoidal embedding range as discrete 0..999


class CosineSchedule(_ContinuousSchedule):
    """Imagen's cosine schedule, logsnr = -2 log tan(pi u / 2), u in [u_min, u_max] hitting the clip range exactly."""

    def _raw_logsnr(self, t: Tensor) -> Tensor:
        u_min = math.atan(math.exp(-0.5 * self.config.logsnr_max))  # angle where logsnr = logsnr_max
        u_max = math.atan(math.exp(-0.5 * self.config.logsnr_min))
        return -2.0 * torch.log(torch.tan(u_min + t * (u_max - u_min)))


class LinearSchedule(_ContinuousSchedule):
    """VDM's continuous beta-linear schedule (Kingma et al. 2021): logsnr = -log(expm1(1e-4 + 10 t^2))."""

    def _raw_logsnr(self, t: Tensor) -> Tensor:
        return -torch.log(torch.expm1(1e-4 + 10.0 * t**2))


# ----------------------------------------------------------------------------------------------------------
# Discrete schedule: a table of alphas_cumprod indexed by integer t
# ----------------------------------------------------------------------------------------------------------

def squaredcos_cap_v2_alphas_cumprod(T: int = 1000, max_beta: float = 0.999) -> Tensor:
    """(T,) float32 alphas_cumprod of Nichol & Dhariwal's cosine schedule, with diffusers' float32 rounding."""
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)  # float32 cumprod, as the IF scheduler computes it


def beta_table_alphas_cumprod(table: str, T: int, beta_start: float, beta_end: float) -> Tensor:
    """(T,) float32 alphas_cumprod of a named beta table, computed in float32 as diffusers' schedulers do."""
    if table == "squaredcos_cap_v2":
        return squaredcos_cap_v2_alphas_cumprod(T)
    if table == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif table == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    else:
        raise ValueError(f"unknown beta table {table!r}; choose one of {list(BETA_TABLES)}")
    return torch.cumprod(1.0 - betas, dim=0)


class DiscreteSchedule:
    """A table of alphas_cumprod indexed by integer t, from any beta table (one class for all)."""
    discrete = True

    def __init__(self, config: ScheduleConfig):
        self.config = config
        self.T = int(config.num_train_timesteps)
        table = "squaredcos_cap_v2" if config.kind == "ddpm_cosine" else config.betas
        self.alphas_cumprod = beta_table_alphas_cumprod(table, self.T, config.beta_start, config.beta_end)  # (T,)
        abar = self.alphas_cumprod.double()
        # sigma from 1 - abar (not from alpha) keeps it accurate where abar is close to 1.
        self._alpha = abar.sqrt().float()
        self._sigma = (1.0 - abar).sqrt().float()
        self._logsnr = (abar.log() - torch.log1p(-abar)).float()

    def _index(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        idx = t.round().long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > self.T - 1):
            raise ValueError(
                f"discrete timesteps must lie in [0, {self.T - 1}], got range "
                f"[{float(t.min())}, {float(t.max())}]; continuous times in [0, 1] need a continuous schedule"
            )
        return idx

    def _lookup(self, table: Tensor, t: Tensor) -> Tensor:
        idx = self._index(t)
        return table.to(idx.device)[idx]

    def logsnr(self, t: Tensor) -> Tensor:
        return self._lookup(self._logsnr, t)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._lookup(self._alpha, t), self._lookup(self._sigma, t)

    def timesteps(self, n: int, spacing: str = "leading") -> Tensor:
        """(n,) descending integer-valued float32 timesteps, as diffusers' `set_timesteps(n)` spaces them."""
        T = self.T
        if int(n) != n or not 1 <= n <= T:
            raise ValueError(f"number of steps must be an integer in [1, {T}], got {n!r}")
        n = int(n)
        if spacing == "leading":      # diffusers' default and what IF's hub config uses
            ts = np.arange(n)[::-1] * (T // n) + int(self.config.steps_offset)
            if ts[0] > T - 1:
                raise ValueError(f"{n} steps with steps_offset {self.config.steps_offset} reach past t={T - 1}")
        elif spacing == "trailing":   # starts at T-1, so the first step sees pure noise
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1]
        else:
            raise ValueError(
                f"unknown timestep spacing {spacing!r}; choose 'leading', 'trailing' or 'linspace', "
                f"or pass respaced_timesteps('smart100') / any descending list to the sampler"
            )
        return torch.tensor(np.asarray(ts, dtype=np.float64).tolist(), dtype=torch.float32)

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return randint(self.T, (batch,), generator, device).float()

    def model_time(self, t: Tensor) -> Tensor:
        return t

    def final_alpha_sigma(self) -> tuple[float, float] | None:
        """Where DDIM's last step lands: None = the clean state; else (alpha, sigma) of alphas_cumprod[0]."""
        if self.config.set_alpha_to_one:
            return None
        return float(self._alpha[0]), float(self._sigma[0])


DDPMCosineSchedule = DiscreteSchedule  # the name IF code knows; "ddpm_cosine" is the squaredcos_cap_v2 table
SCHEDULES = {"cosine": CosineSchedule, "linear": LinearSchedule, "ddpm_cosine": DiscreteSchedule,
             "discrete": DiscreteSchedule}


def make_schedule(cfg: ScheduleConfig | str) -> Schedule:
    """Build a schedule from its config (a bare kind name is accepted for convenience)."""
    if isinstance(cfg, str):
        cfg = ScheduleConfig(kind=cfg)
    return SCHEDULES[cfg.kind](cfg)


# ----------------------------------------------------------------------------------------------------------
# Custom timestep lists (IF's named respacings) and the forward-process posterior
# ----------------------------------------------------------------------------------------------------------

# Section counts of DeepFloyd IF's named respacings (deepfloyd_if/diffusers `timesteps.py`).
IF_RESPACINGS = {
    "fast27": "10,10,3,2,2",
    "smart27": "7,4,2,1,2,4,7",
    "smart50": "10,6,4,3,2,2,3,4,6,10",
    "smart100": "1,1,1,1,2,2,2,2,2,2,3,3,4,4,5,5,6,7,7,8,9,10,13",
    "smart185": "1,1,2,2,2,3,3,3,4,5,6,7,8,9,10,11,12,13,14,15,16,18,20",
    "super27": "1,1,1,1,1,1,1,2,5,13",
    "super40": "2,2,2,2,2,2,3,4,6,15",
    "super100": "4,4,6,6,8,8,10,10,14,30",
}


def respaced_timesteps(spec: str | Sequence[int], num_train_timesteps: int = 1000) -> Tensor:
    """Descending timesteps from section counts (Nichol & Dhariwal 2021, "respacing").

    `spec` is an IF name ("smart100"), a string "10,10,3,2,2" or a list of counts. [0, T) is cut into
    len(counts) near-equal sections and each section gives `count` evenly spaced (rounded) indices.
    """
    if isinstance(spec, str):
        counts_str = IF_RESPACINGS.get(spec, spec)
        try:
            counts = [int(c) for c in counts_str.split(",")]
        except ValueError:
            raise ValueError(
                f"unknown respacing {spec!r}; use one of {sorted(IF_RESPACINGS)} or section counts like '10,10,3,2,2'"
            ) from None
    else:
        counts = [int(c) for c in spec]
    T = int(num_train_timesteps)
    size_per, extra = divmod(T, len(counts))
    steps, start = set(), 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"section {i} of {spec!r} asks for {count} steps from {size} timesteps; use 1..{size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        pos = 0.0
        for _ in range(count):  # accumulate (not j * stride): IF's published lists depend on that rounding
            steps.add(start + round(pos))
            pos += stride
        start += size
    return torch.tensor(sorted(steps, reverse=True), dtype=torch.float32)


def as_timesteps(schedule: Schedule, ts: Sequence[float] | Tensor) -> Tensor:
    """Validate a custom timestep list: (n,) strictly descending, in the schedule's range. Returns float32."""
    ts = torch.as_tensor(ts, dtype=torch.float32).detach().cpu()
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D list, got shape {tuple(ts.shape)}")
    if ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"timesteps must be strictly descending (noisiest first), got {ts.tolist()[:8]}...")
    hi = schedule.config.num_train_timesteps - 1 if schedule.discrete else 1.0
    if float(ts.min()) < 0 or float(ts.max()) > hi:
        raise ValueError(f"timesteps must lie in [0, {hi}] for schedule {schedule.config.kind!r}, got {ts.tolist()[:8]}")
    if schedule.discrete and not bool((ts == ts.round()).all()):
        raise ValueError(f"discrete schedule {schedule.config.kind!r} needs integer timesteps, got {ts.tolist()[:8]}")
    return ts


def gaussian_posterior(alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor):
    """q(x_s | x_t, x0) for s < t (Ho et al. 2020, eq. 6-7), in alpha/sigma form.

    Returns (c_x0, c_xt, var, beta) with mean = c_x0 * x0 + c_xt * x_t, variance `var` (the "fixed small"
    DDPM variance) and beta = 1 - abar_t / abar_s (the "fixed large" one). In float32, beta is taken as
    (sigma_t^2 - sigma_s^2) / alpha_s^2 near the clean end (1 - abar_t/abar_s cancels there) and as
    1 - (alpha_t/alpha_s)^2 near the noisy end (where the sigma form cancels).
    The clean state s is alpha_s = 1, sigma_s = 0 (then var = 0 and the mean is x0).
    """
    beta = torch.where(sigma_t < alpha_s, (sigma_t**2 - sigma_s**2) / alpha_s**2, 1 - (alpha_t / alpha_s) ** 2)
    c_x0 = alpha_s * beta / sigma_t**2
    c_xt = (alpha_t / alpha_s) * sigma_s**2 / sigma_t**2
    var = sigma_s**2 / sigma_t**2 * beta
    return c_x0, c_xt, var, beta
