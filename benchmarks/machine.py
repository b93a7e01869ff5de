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


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch_ours": torch.__version__}


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
