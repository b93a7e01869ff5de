"""What every benchmark records about the machine, and how it rewrites its own section of README.md."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def matmul_peak(dtype: torch.dtype, sizes=(512, 1024, 2048), trials: int = 12) -> dict:
    """The machine's matmul peak: the best single square torch.matmul (2 n^3 FLOPs) over a few sizes and
    `trials` repeats each. Best-of, not a mean, so that moments when another process holds the core
    do not count as the machine being slow."""
    best, per_size = 0.0, {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.matmul(a, b)  # warm-up
        rate = 0.0
        for _ in range(trials):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            rate = max(rate, 2 * n**3 / (time.perf_counter() - t0))
        per_size[n] = rate
        best = max(best, rate)
    return {"flops_per_s": best, "per_size": per_size}


# The CPU flags that decide how fast each precision runs (oneDNN's fp32 / bf16 / fp16 / int8 paths).
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile",
                  "amx_bf16", "amx_int8", "asimd", "bf16", "sve")


def machine() -> dict:
    from openimagen.precision import bf16_slowdown, cpu_flags, cpu_model, native_bf16

    flags = cpu_flags() or set()
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch_ours": torch.__version__,
            "cpu_flags": sorted(f for f in RELEVANT_FLAGS if f in flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16("cpu"), "bf16_matmul_slowdown": round(bf16_slowdown(), 2)}


def machine_words(m: dict) -> str:
    """How a README names the machine: model, cores, and whether bf16 is native."""
    bf16 = "native bf16" if m.get("native_bf16") else f"no native bf16, emulated, a bf16 matmul ~{float(m.get('bf16_matmul_slowdown', 0)):.0f}x slower than fp32"
    return (f"{m['cpu']} ({m['logical_cpus']} logical CPUs; torch CPU capability "
            f"{m.get('torch_cpu_capability', '?')}, {bf16})")


def replace_section(path: Path, section: str, body: str) -> None:
    """Put `body` (which starts with the `section` heading) in place of that section of a markdown file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"  # re-read right before writing
    start = text.find(section)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(section))
        text = text[:start] + body + ("" if nxt < 0 else "\n" + text[nxt + 1:])
    path.write_text(text)
