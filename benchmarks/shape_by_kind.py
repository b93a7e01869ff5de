"""Where the bundled cascade loses shapes: fresh training-distribution scenes of each kind, scored at the base
(32 px enlarged 2x, as score_base.py) and at the final size, with which shape was read for single objects.

    PYTHONPATH=src .venv/bin/python benchmarks/shape_by_kind.py [--model DIR] [--json benchmarks/results/shape_by_kind.json]

Scenes come from `ShapesWorld(seed=--scenes-seed)` (default 9191) one kind at a time (template captions, never a benchmark file),
drawn with the model's defaults at seed 0, prompts as written (no expansion: they are template captions).
For a relation scene "shape" is right only when both objects' shapes are.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

KINDS = {"single": 72, "relation": 40, "count": 30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model folder (default: the bundled model)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")
    p.add_argument("--scenes-seed", type=int, default=9191, help="which fresh scenes (ShapesWorld's seed)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from openimagen.data.shapes import ShapesWorld
    from openimagen.data.shapes_captions import parse_caption
    from openimagen.evaluate import score_many
    from openimagen.evaluate.scorer import score
    from openimagen.load import load_model

    cascade = load_model(args.model)
    result = {"model": args.model or "bundled", "seed": args.seed, "scenes_seed": args.scenes_seed, "kinds": {}}
    t0 = time.process_time()
    for kind, n in KINDS.items():
        ds = ShapesWorld(resolution=64, size=4 * n, seed=args.scenes_seed, kinds=(kind,))
        captions = [ds[i]["caption"] for i in range(n)]
        out = cascade.generate(captions, seed=args.seed, progress=False, expand=False)
        sizes = {"base (32 px, 2x)": F.interpolate(out.images[0], scale_factor=2, mode="bilinear").clamp(-1, 1),
                 f"final ({out.images[-1].shape[-1]} px)": out.images[-1]}
        rows = {}
        for name, images in sizes.items():
            rows[name] = {"accuracy": score_many(images, captions).accuracy}
            if kind == "single":   # what each asked shape was read as
                conf: dict = collections.defaultdict(collections.Counter)
                for im, cap in zip(images, captions):
                    conf[parse_caption(cap).objects[0].shape][score(im, cap, details=True)[1]["shape"]] += 1
                rows[name]["read_as"] = {k: dict(v.most_common()) for k, v in sorted(conf.items())}
            print(kind, n, name, {k: f"{v:.0%}" for k, v in rows[name]["accuracy"].items()}, flush=True)
        result["kinds"][kind] = {"scenes": n, **rows}
    result["cpu_s"] = round(time.process_time() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
