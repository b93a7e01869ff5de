"""Which base-stage solver and step count keep prompt fidelity: the scorer (evaluate/) on random scenes.

Scenes are drawn from the training distribution (`data.shapes.sample_scene`, a seed of this script, never the
benchmark prompts), the bundled cascade generates each caption with the base stage's sampler and steps varied
and the SR stage at its defaults (so only the base's solver differs), and the prompt-fidelity scorer judges
the final 64 px image. The same seed per configuration, so the start noise is identical across solvers.

    PYTHONPATH=src python benchmarks/bench_samplers.py --per-kind 16
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_words, replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [("dpmpp_2m", 25), ("dpmpp_2m", 15), ("dpmpp_3m", 15), ("dpmpp_2m", 10), ("dpmpp_3m", 10)]
KINDS = ("single", "relation", "count")
KEYS = ("shape", "count", "color", "position", "relation", "size")


def scenes(per_kind: int, seed: int) -> list[str]:
    from openimagen.data.shapes import caption, sample_scene

    rng = random.Random(f"bench-samplers:{seed}")
    return [caption(sample_scene(rng, kind), rng) for kind in KINDS for _ in range(per_kind)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default=None,
                    help="sampler:steps,... for the base (default: %s); the first is the reference of the paired "
                         "comparison" % ",".join(f"{s}:{n}" for s, n in CONFIGS))
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/samplers.json"))
    ap.add_argument("--readme", default=str(ROOT / "benchmarks/README.md"))
    ap.add_argument("--render", action="store_true", help="only rewrite the README section from --json")
    args = ap.parse_args(argv)
    if args.render:
        replace_section(Path(args.readme), "## Base-stage solvers judged by the scorer",
                        render(json.loads(Path(args.json).read_text()), _rel(args.json)))
        return
    torch.set_num_threads(args.threads)
    from openimagen.evaluate.scorer import score_many
    from openimagen.load import load_model

    cascade = load_model(None)
    caps = scenes(args.per_kind, args.seed)
    load_before, results = os.getloadavg(), []
    configs = CONFIGS if args.configs is None else [
        (c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    for sampler, steps in configs:
        images, t0 = [], time.perf_counter()
        for k in range(0, len(caps), args.batch):
            out = cascade.generate(caps[k:k + args.batch], sampler=[sampler, None], steps=[steps, None],
                                   seed=args.seed + k, progress=False)
            images.append(out.images[-1])
        report = score_many(torch.cat(images), caps)
        results.append({"sampler": sampler, "steps": steps, "seconds": time.perf_counter() - t0,
                        "accuracy": report.accuracy, "counts": report.counts, "items": report.items})
        print(sampler, steps, f"{results[-1]['seconds']:.0f}s", report.summary(), flush=True)
    res = {"measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "machine": {**machine(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
           "per_kind": args.per_kind, "kinds": KINDS, "seed": args.seed, "captions": caps, "results": results}
    Path(args.json).write_text(json.dumps(res, indent=1))
    replace_section(Path(args.readme), "## Base-stage solvers judged by the scorer", render(res, _rel(args.json)))


def render(res: dict, json_name: str = "benchmarks/results/samplers.json") -> str:
    m = res["machine"]
    keys = [k for k in KEYS if k in res["results"][0]["accuracy"]]
    rows = ["| base sampler, steps | " + " | ".join(keys) + " | mean | wall, s (all scenes, both stages) |",
            "|---" * (len(keys) + 3) + "|"]
    for r in res["results"]:
        acc = [r["accuracy"][k] for k in keys]
        rows.append(f"| {r['sampler']} {r['steps']} | " + " | ".join(f"{a:.0%}" for a in acc) +
                    f" | {sum(acc) / len(acc):.1%} | {r['seconds']:.0f} |")
    n = res["per_kind"] * len(res["kinds"])
    ref = res["results"][0]
    paired = [f"| {r['sampler']} {r['steps']} | {w} | {l} | {sign_test(w, l):.2f} |"
              for r in res["results"][1:] for w, l in [wins_losses(r, ref)]]
    table2 = ("\n\nPaired against the first row, image by image (an image counts as right when every attribute its "
              "caption names is read right; same seed, so only the base's solver differs): images only this row got "
              "right, images only the first row got right, and the two-sided sign test's p-value.\n\n"
              "| base sampler, steps | right here only | right in the first row only | p |\n|---|---|---|---|\n"
              + "\n".join(paired)) if paired else ""
    return (f"## Base-stage solvers judged by the scorer\n\n{n} random training-distribution scenes "
            f"({res['per_kind']} each of {', '.join(res['kinds'])}; not the benchmark prompts), the bundled cascade "
            f"with the base stage's sampler and steps as listed and the SR stage at its defaults (dpmpp_2m, 25 "
            f"steps), the same seeds for every row; scored by `evaluate/` on the 64 px images. Measured "
            f"{res['measured']} on {machine_words(m)}, 1 thread (shared machine: the times are indicative).\n\n"
            + "\n".join(rows) + table2 + f"\n\nShape is judged on all {n} scenes, count / position / relation / size on "
            f"{res['per_kind']} each: one scene moves shape by {100 / n:.1f} points, so differences of a few scenes are "
            f"noise (binomial standard error at 70%: {100 * (0.21 / n) ** 0.5:.0f} points on shape, "
            f"{100 * (0.21 / res['per_kind']) ** 0.5:.0f} on the others). Wall times are of a shared machine (load average "
            f"{m['load_avg_before'][0]:.1f} before, {m['load_avg_after'][0]:.1f} after) and do not rank the solvers (a "
            "step costs the same U-Net call in each; time is proportional to steps).\n\n"
            "```\nPYTHONPATH=src python benchmarks/bench_samplers.py --per-kind "
            f"{res['per_kind']} --seed {res['seed']} --configs " + ",".join(f"{r['sampler']}:{r['steps']}" for r in res["results"])
            + f" --json {json_name}\n```\nRaw per-image scores: `{json_name}`.\n")


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def wins_losses(r: dict, ref: dict) -> tuple[int, int]:
    """(images right in r only, images right in ref only); right = every attribute the caption names."""
    ok = lambda item: all(item["scores"].values())  # noqa: E731
    pairs = [(ok(a), ok(b)) for a, b in zip(r["items"], ref["items"])]
    return sum(a and not b for a, b in pairs), sum(b and not a for a, b in pairs)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (binomial, p = 1/2) on the discordant pairs."""
    from math import comb

    n, k = wins + losses, min(wins, losses)
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


if __name__ == "__main__":
    main()
