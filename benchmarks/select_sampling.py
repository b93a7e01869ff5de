"""Choose a trained cascade's sampling defaults on random training-distribution scenes (never a benchmark file).

    PYTHONPATH=src python benchmarks/select_sampling.py runs/shapes-128 --json benchmarks/results/sampling_128.json
    PYTHONPATH=src python benchmarks/select_sampling.py runs/shapes-128 --apply     # then write the winner
    # the grid split over two cores (one process per noise level), then joined and applied
    PYTHONPATH=src python benchmarks/select_sampling.py MODEL --noise-level 0.12 --json a.json &
    PYTHONPATH=src python benchmarks/select_sampling.py MODEL --noise-level 0.2 --json b.json; wait
    PYTHONPATH=src python benchmarks/select_sampling.py MODEL --join a.json b.json --json all.json --apply

The scenes are fresh draws of the training distribution: `ShapesWorld(phrasing=..., seed=SCENE_SEED)`, train
split (no held-out combination), a seed no training run uses, so neither benchmark file nor training caption
decides. Every setting of the grid -- base guidance x SR noise augmentation (the same level for every SR
stage) -- generates the same scenes with the same seeds; each is scored with the shapes scorer at the final
resolution and ranked by the mean of its per-attribute accuracies (every attribute counts once, whatever its
number of prompts; a tie goes to the setting that generated faster). `--sr-steps` adds the SR stages' step
count to the grid: fewer steps where the scorer sees no loss make `generate` faster. `--apply` writes the winner's guidance and noise level into the model folder's stage
configs (the defaults `generate` uses).

Cost: 3 stages x 25 steps, about 6 CPU-seconds per image and setting for shapes-128 on the development
machine (measured on the smoke run: 6 images, 37 CPU-s): the default grid (6 settings x 60 scenes) is
~36 CPU-minutes plus scoring (~0.3 s an image).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCENE_SEED = 7_777   # training runs use seed 0; presets never use this one
GUIDANCE = (1.5, 2.0, 3.0)
NOISE_LEVELS = (0.12, 0.2)


def training_scenes(n: int, resolution: int, phrasing: str) -> list[str]:
    from openimagen.data.shapes import STANDARD_HOLDOUT, ShapesWorld

    world = ShapesWorld(resolution=resolution, size=n, seed=SCENE_SEED, holdout=STANDARD_HOLDOUT, phrasing=phrasing)
    return [world.scene_and_caption(i)[1] for i in range(n)]


def evaluate_setting(cascade, prompts: list[str], guidance: float, noise: float, batch: int = 10,
                     sr_steps: int | None = None) -> dict:
    import torch

    from openimagen.evaluate import score_many

    n_stages = len(cascade.stages)
    images, start = [], time.process_time()
    for k in range(0, len(prompts), batch):
        out = cascade.generate(prompts[k:k + batch], guidance=[guidance] + [1.0] * (n_stages - 1),
                               noise_level=[None] + [noise] * (n_stages - 1), seed=k // batch, progress=False,
                               steps=None if sr_steps is None else [None] + [sr_steps] * (n_stages - 1))
        images.append(out.images[-1])
    cpu_s = time.process_time() - start
    report = score_many(torch.cat(images), prompts)
    mean = sum(report.accuracy.values()) / len(report.accuracy)
    sr = sr_steps if sr_steps is not None else cascade.stages[-1].config.steps
    return {"guidance": guidance, "noise_level": noise, "sr_steps": sr, "mean": round(mean, 4),
            "accuracy": {k: round(v, 4) for k, v in report.accuracy.items()}, "counts": report.counts,
            "generate_cpu_s": round(cpu_s, 1)}


def apply_defaults(model_dir: Path, guidance: float, noise: float, sr_steps: int | None = None) -> None:
    """Write `guidance` into stage 0's config and `noise` (and `sr_steps`) into every SR stage's (validated
    by StageConfig)."""
    from openimagen.config import from_dict, load_json, save_json
    from openimagen.stage import StageConfig

    index = load_json(model_dir / "cascade.json")
    for k, name in enumerate(index["stages"]):
        path = model_dir / name / "config.json"
        data = load_json(path)
        data.update({"guidance": guidance} if k == 0 else {"noise_level": noise})
        if k and sr_steps is not None:
            data["steps"] = sr_steps
        save_json(from_dict(StageConfig, data, where=str(path)), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a run folder (its model/) or a model folder")
    p.add_argument("--scenes", type=int, default=60)
    p.add_argument("--phrasing", default="natural", choices=("templates", "natural"))
    p.add_argument("--guidance", type=float, nargs="+", default=list(GUIDANCE))
    p.add_argument("--noise-level", type=float, nargs="+", default=list(NOISE_LEVELS))
    p.add_argument("--sr-steps", type=int, nargs="+", default=[None],
                   help="sampling steps of every SR stage (default: the model's own)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write every setting's scores here")
    p.add_argument("--apply", action="store_true", help="write the winner into the model folder's stage configs")
    p.add_argument("--join", nargs="+", default=None, metavar="JSON",
                   help="rank the rows of earlier --json files (parts of one grid, same scenes) instead of sampling")
    args = p.parse_args(argv)

    import torch

    from openimagen.load import load_model

    torch.set_num_threads(args.threads)
    folder = Path(args.model)
    folder = folder / "model" if (folder / "model" / "cascade.json").is_file() else folder
    rows = []
    if args.join:
        parts = [json.loads(Path(f).read_text()) for f in args.join]
        for f, part in zip(args.join, parts):
            if (part["scenes"], part["scene_seed"], part["phrasing"]) != (args.scenes, SCENE_SEED, args.phrasing):
                raise SystemExit(f"{f} was scored on other scenes ({part['scenes']}, seed {part['scene_seed']}, "
                                 f"{part['phrasing']}); join only parts of one grid")
            rows += part["rows"]
    else:
        cascade = load_model(str(folder))
        prompts = training_scenes(args.scenes, cascade.stages[-1].resolution, args.phrasing)
        for g in args.guidance:
            for noise in args.noise_level:
                for sr_steps in args.sr_steps:
                    rows.append(evaluate_setting(cascade, prompts, g, noise, sr_steps=sr_steps))
                    print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: (r["mean"], -r["generate_cpu_s"]))  # a tie goes to the faster setting
    print(f"best: guidance {best['guidance']}, SR noise level {best['noise_level']}, SR steps {best.get('sr_steps')} "
          f"(mean accuracy {best['mean']:.1%})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(folder), "scenes": args.scenes, "scene_seed": SCENE_SEED,
                                               "phrasing": args.phrasing, "rows": rows, "best": best}, indent=2) + "\n")
    if args.apply:
        apply_defaults(folder, best["guidance"], best["noise_level"], best.get("sr_steps"))
        print(f"wrote guidance {best['guidance']}, noise level {best['noise_level']} and SR steps "
              f"{best.get('sr_steps')} into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
