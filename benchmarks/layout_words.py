"""Does a shapes-world base stage read layout words? A probe, and the base-only runs it was used on.

    probe   For scenes of one kind, the denoiser's x0 error with the true caption and with the same caption
            with its layout words swapped (left<->right, top<->bottom, above<->below, ...; for counts the
            number). At noise levels where the layout is still open, a model that reads those words does
            worse with the swapped caption: ratio = mse(swapped) / mse(true) > 1. A ratio of 1.00 means the
            words are ignored. Cheap (seconds), far less noisy than generating and scoring.
    train   A base-stage-only run of the shapes-small recipe with the schedule shift and the Min-SNR weight
            as arguments -- the experiment behind the recipe's shifted schedule (see train/presets.py).

    PYTHONPATH=src python benchmarks/layout_words.py train runs/probe-shift --steps 1200 --shift -3
    PYTHONPATH=src python benchmarks/layout_words.py probe runs/probe-shift runs/probe-plain --json out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys

import torch

SWAPS = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "above": "below", "below": "above",
         "over": "under", "under": "over", "beneath": "above", "middle": "top", "center": "bottom"}
COUNT_SWAPS = {"two": "four", "three": "two", "four": "two"}


def swapped(caption: str, kind: str) -> str:
    table = COUNT_SWAPS if kind == "count" else SWAPS
    return " ".join(table.get(w, w) for w in caption.split(" "))


@torch.no_grad()
def probe(model_dir: str, ts=(0.95, 0.9, 0.8), n: int = 48, seed: int = 123) -> dict:
    from openimagen.data.shapes import caption, render, sample_scene, to_tensor
    from openimagen.loading import load_model

    cascade = load_model(model_dir)
    stage, enc = cascade.stages[0], cascade.text_encoder
    rng, out = random.Random(seed), {}
    for kind in ("single", "relation", "count"):
        scenes = [sample_scene(rng, kind) for _ in range(n)]
        x0 = torch.stack([to_tensor(render(s, stage.resolution)) for s in scenes])
        caps = [caption(s, rng) for s in scenes]
        conds = [dict(zip(("text_embeds", "text_mask"), enc.encode(c))) for c in (caps, [swapped(c, kind) for c in caps])]
        g = torch.Generator().manual_seed(0)
        for t in ts:
            tt = torch.full((n,), float(t))
            a, s = stage.schedule.alpha_sigma(tt)
            x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
            true, swap = (((stage.model(x_t, tt, c).x0 - x0) ** 2).mean().item() for c in conds)
            out[f"{kind}@t={t}"] = {"mse_true": true, "mse_swapped": swap, "ratio": swap / true}
    return out


def train_base(out: str, steps: int, shift: float, min_snr: float | None) -> None:
    from openimagen.train.loop import train
    from openimagen.train.presets import shapes_small

    cfg = shapes_small()
    st = cfg.stages[0]
    sched = dataclasses.replace(st.stage.schedule, logsnr_shift=shift)
    st = dataclasses.replace(st, stage=dataclasses.replace(st.stage, schedule=sched), steps=steps, min_snr_gamma=min_snr)
    train(dataclasses.replace(cfg, stages=(st,), sample_every=0, checkpoint_every=400), out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("models", nargs="+", help="model or run folders ('-' = the bundled model)")
    pr.add_argument("--t", default="0.95,0.9,0.8", help="noise times to probe, in the model's schedule units")
    pr.add_argument("--json", help="also write the results here")
    tr = sub.add_parser("train")
    tr.add_argument("out")
    tr.add_argument("--steps", type=int, default=1200)
    tr.add_argument("--shift", type=float, default=-3.0)
    tr.add_argument("--min-snr", type=float, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "train":
        train_base(args.out, args.steps, args.shift, args.min_snr)
        return 0
    ts = tuple(float(v) for v in args.t.split(","))
    results = {}
    for m in args.models:
        results[m] = probe(None if m == "-" else m, ts)
        for key, r in results[m].items():
            print(f"{m}  {key:18s} mse true {r['mse_true']:.4f}  swapped {r['mse_swapped']:.4f}  ratio {r['ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
