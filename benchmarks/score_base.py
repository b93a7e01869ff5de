"""Score only the base stage of one or more models on a benchmark file: a cheap look at a base before (or
without) its SR stages, e.g. a base trained alone with `train --train-stages 0` (issue 16's diagnosis).

    PYTHONPATH=src .venv/bin/python benchmarks/score_base.py MODEL... [--prompts templates] [--json OUT]

Each model's stage 0 draws every prompt of the file (seed 0, 10 steps, the stage's other defaults); the
32 px images are enlarged 2x bilinearly, because the scorer's segmentation is tuned for 64 px, and scored by
the shapes scorer. Numbers are comparable between bases scored this way, not with `openimagen evaluate`
(which scores the cascade's final images); Tesseract cannot read 32 px signs, so "word" means little here.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def score_base(model: str, prompts: list[str], steps: int, seed: int) -> dict:
    from openimagen.evaluate import score_many
    from openimagen.load import load_model

    cascade = load_model(model)
    t0 = time.process_time()
    images = cascade.generate(prompts, seed=seed, progress=False, stop_at=1, steps=[steps]).images[-1]
    report = score_many(F.interpolate(images, scale_factor=2, mode="bilinear").clamp(-1, 1), prompts)
    return {"model": model, "accuracy": report.accuracy, "counts": report.counts,
            "cpu_s": round(time.process_time() - t0, 1), "summary": report.summary()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--prompts", default="templates", help="a benchmark file name: templates or natural")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from openimagen.evaluate import load_benchmark_prompts

    prompts = load_benchmark_prompts(args.prompts)
    rows = []
    for m in args.models:
        rows.append(score_base(m, prompts, args.steps, args.seed))
        print(f"{m}: {rows[-1]['summary']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"prompts": args.prompts, "steps": args.steps, "seed": args.seed,
                                               "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
