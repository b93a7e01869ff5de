"""The fixed shapes-world benchmark: ~100 captions covering every attribute, one per line.

`assets/benchmark_prompts.txt` was written once by `write_benchmark_prompts()` and is committed;
a test checks that the file still equals what the generator produces. Prompts avoid the
combinations in `STANDARD_HOLDOUT`, so a model trained on the standard train split is scored
in-distribution (use `ShapesWorld(split="heldout")` captions to probe generalisation).
"""
from __future__ import annotations

import random
from pathlib import Path

from openimagen.data.shapes import STANDARD_HOLDOUT, caption, sample_scene

BENCHMARK_PATH = Path(__file__).resolve().parent.parent / "assets" / "benchmark_prompts.txt"
BENCHMARK_MIX = {"single": 35, "relation": 25, "count": 25, "word": 15}   # prompts per scene kind


def generate_benchmark_prompts(seed: int = 2024) -> list[str]:
    rng = random.Random(f"shapes-benchmark:{seed}")
    prompts: list[str] = []
    for kind, n in BENCHMARK_MIX.items():
        seen: set[str] = set()
        while len(seen) < n:
            scene = sample_scene(rng, kind)
            text = caption(scene, rng)
            if not STANDARD_HOLDOUT.contains(scene) and text not in seen:
                seen.add(text)
                prompts.append(text)
    return prompts


def load_benchmark_prompts() -> list[str]:
    return [line for line in BENCHMARK_PATH.read_text().splitlines() if line.strip()]


def write_benchmark_prompts(path: Path = BENCHMARK_PATH) -> None:
    Path(path).write_text("\n".join(generate_benchmark_prompts()) + "\n")
