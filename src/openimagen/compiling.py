"""`torch.compile` for our U-Nets, as an option: what it needs on this machine, and one clear error if it is missing.

On the CPU, inductor writes C++ and builds it with the system compiler (g++ or clang++, `CXX` if set), so a
machine without one cannot compile; we say so before torch fails deep inside a first forward. Compiling costs
tens of seconds to minutes at the first call (and again for every new input shape), so it pays off only for
long runs: a training run, or many images in one process. Where it helps is measured in benchmarks/README.md.
"""
from __future__ import annotations

import os
import shutil

import torch


class CompilerUnavailable(ValueError):
    """No way to compile here; a ValueError so the CLI shows it as one line (exit code 2)."""



def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU, or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def check_can_compile(device: str | torch.device = "cpu") -> None:
    if not hasattr(torch, "compile"):
        raise CompilerUnavailable(f"torch {torch.__version__} has no torch.compile; upgrade torch or leave compile off")
    if torch.device(device).type == "cpu" and cpp_compiler() is None:
        raise CompilerUnavailable(
            "compile=true needs a C++ compiler for torch.compile on the CPU (inductor builds C++): none of "
            "g++, clang++, c++ (or $CXX) is on PATH; install one (e.g. apt install g++) or leave compile off")


def compile_cascade(cascade, device: str | torch.device = "cpu"):
    """Compile every stage's U-Net in place (`Module.compile`: weights and state-dict keys unchanged), for a
    process that samples many batches of one size; returns the cascade. Training: `TrainConfig.compile`."""
    check_can_compile(device)
    for stage in cascade.stages:
        stage.unet.compile(dynamic=False)
    return cascade
