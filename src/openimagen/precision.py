"""Which floating-point precision a machine should compute in: `auto` picks, an explicit choice is honoured.

    resolve_precision("auto", "cpu")    # "fp32" on an AVX2-only CPU, "bf16" on one with AVX512-BF16 / AMX
    resolve_precision("auto", "cuda")   # "bf16" on Ampere and later, "fp16" on Volta / Turing, else "fp32"

Why it matters: without native bf16 (AVX2-only x86), oneDNN emulates bf16 and a bf16 matmul runs ~90x slower
than fp32 (issue 17: 0.9 vs 78.6 GFLOP/s on an AMD EPYC), so bf16 as a blanket default turns an hour of
training into a day. Native support is decided by the CPU's flags where the OS lists them (Linux
/proc/cpuinfo: `avx512_bf16`, `amx_bf16`); elsewhere by a sub-second probe (a bf16 vs fp32 matmul), cached
per machine in the user's cache folder. An explicit `bf16` on a machine that emulates it still runs, with
one warning naming the measured slowdown.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger("openimagen")

CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # x86 flags under which oneDNN runs bf16 natively
_PROBE_N = 256                                   # 256^3 matmul: ~40 ms at the emulated rate, <1 ms native


def check_choice(name: str, what: str = "precision") -> str:
    if name not in CHOICES:
        raise ValueError(f"unknown {what} {name!r}; choose one of {list(CHOICES)} (auto: the machine's fastest)")
    return name


# ----------------------------------------------------------------------------------------------
# What the machine does natively


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux lists them, or None where there is no /proc/cpuinfo to read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / ARM spelling
            return set(line.split(":", 1)[1].split())
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_from_flags() -> bool | None:
    """True/False when the flags decide it (x86 Linux), None when they cannot (no flags, or not x86)."""
    flags = cpu_flags()
    if flags is None or "sse2" not in flags:  # ARM lists "bf16" but torch's CPU kernels may not use it: probe
        return None
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def _cache_path() -> Path:
    root = os.environ.get("OPENIMAGEN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openimagen"
    return Path(root) / "precision_probe.json"


def _machine_key() -> str:
    return f"{cpu_model()} | {platform.machine()} | torch {torch.__version__} | {torch.backends.cpu.get_cpu_capability()}"


def _time_matmul(dtype: torch.dtype) -> float:
    """Best-of time of one 256^2 matmul; best-of so that a moment when another process holds the core does
    not count (fp32 takes under a millisecond, so it gets more tries)."""
    repeats = 20 if dtype == torch.float32 else 2
    a = torch.randn(_PROBE_N, _PROBE_N).to(dtype)
    b = torch.randn(_PROBE_N, _PROBE_N).to(dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, first-touch
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return best


@lru_cache(maxsize=None)
def bf16_slowdown() -> float:
    """How many times slower a bf16 CPU matmul is than fp32 on this machine (<1: bf16 is faster).

    Measured once (well under a second even where bf16 is emulated) and cached on disk per CPU model and
    torch version, so later processes read it instead of measuring."""
    path, key = _cache_path(), _machine_key()
    try:
        cached = json.loads(path.read_text())
        if cached.get("machine") == key:
            return float(cached["bf16_over_fp32"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ratio = _time_matmul(torch.bfloat16) / _time_matmul(torch.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"machine": key, "bf16_over_fp32": ratio, "matmul": _PROBE_N}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measure again next time
    return ratio


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Does `device` compute bf16 natively (at least as fast as fp32)?"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False  # mps and others: fp32 until measured
    by_flags = cpu_bf16_from_flags()
    return by_flags if by_flags is not None else bf16_slowdown() <= 1.0


def _fast_fp16_cuda(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 7  # tensor cores from Volta on


# ----------------------------------------------------------------------------------------------
# The choice


def resolve_precision(name: str, device: str | torch.device = "cpu") -> str:
    """`name` as a concrete precision for `device`: "auto" becomes the machine's fastest safe choice
    (bf16 where native, else fp16 on CUDA with tensor cores, else fp32); an explicit name stays, with a
    one-time warning when it is bf16 on a CPU that emulates it."""
    check_choice(name)
    device = torch.device(device)
    if name == "auto":
        if native_bf16(device):
            return "bf16"
        if device.type == "cuda" and _fast_fp16_cuda(device):
            return "fp16"
        return "fp32"
    if name == "bf16" and device.type == "cpu" and not native_bf16(device):
        _warn_emulated_bf16()
    return name


@lru_cache(maxsize=None)
def _warn_emulated_bf16() -> None:
    log.warning("bf16 is emulated on this CPU (%s: no AVX512-BF16 or AMX); a bf16 matmul measured %.0fx slower "
                "than fp32 here. Use --precision auto (or fp32) unless you need bf16's numerics.",
                cpu_model(), bf16_slowdown())


def training_mixed_precision(name: str, device: str | torch.device = "cpu") -> str:
    """A training precision (TrainConfig.mixed_precision: auto | no | bf16 | fp16) as accelerate's
    `mixed_precision` ("no" | "bf16" | "fp16")."""
    concrete = "fp32" if name == "no" else resolve_precision(name, device)
    return {"fp32": "no"}.get(concrete, concrete)
