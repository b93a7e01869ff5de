"""Our base stage vs imagen-pytorch's, trained for the same CPU time on the same data and embeddings.

    # the full comparison (~2 x the base stage's CPU time, plus sampling): ours trains the shapes-128 base
    PYTHONPATH=src python benchmarks/bench_equal_budget.py runs/equal-budget --json benchmarks/results/equal_budget.json
    # reuse a base already trained and timed (e.g. stage 0 of a shapes-128 run), give the peer the same time
    PYTHONPATH=src python benchmarks/bench_equal_budget.py runs/equal-budget --ours runs/shapes-128 --budget-cpu-s 7000
    # smoke (about a minute): a few steps, a few prompts, a short peer sampling loop
    PYTHONPATH=src python benchmarks/bench_equal_budget.py /tmp/eb --base-steps 12 --size 64 --prompts 4 --peer-sample-steps 10

Ours: the base stage of the shapes-128 preset alone (32 px, text layout + spelling, spelled MiniLM), trained by
`openimagen.train.train` for --base-steps; its budget is the CPU time (user + system, getrusage) of that
train() call, caption embedding excluded (done first, shared by both). The peer: imagen-pytorch (its own venv,
../shared/peers/imagen_pytorch.sh) with its own defaults for everything but size (a Unet of the closest
parameter count, peer_imagen_pytorch.search), trained on the same 32 px images and the same embeddings (the
letter tokens included) until its process has used the same CPU time, one thread each. Both sample every
prompt of both shipped benchmark files at 32 px (ours: the model's defaults; the peer: its 1000 steps and
cond_scale 3, the value of imagen-pytorch's README) and are scored by our scorer at 32 px. Word needs >= 64 px
to be read, so at 32 px it is reported but means little.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_PY = ROOT / ".peers" / "imagen-pytorch" / "bin" / "python-offline"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def base_config(steps: int, size: int):
    from openimagen.train.presets import LAYOUT_WARMUP, shapes_128

    cfg = shapes_128()
    base = cfg.stages[0]
    warmup = min(LAYOUT_WARMUP, steps // 2)
    base = dataclasses.replace(base, steps=steps, extras_warmup=warmup)
    return dataclasses.replace(cfg, stages=(base,), data=dataclasses.replace(cfg.data, size=size),
                               sample_prompts=cfg.sample_prompts[:2])


def score_table(name: str, reports: dict) -> list[str]:
    from openimagen.evaluate.scorer import ATTRIBUTES

    rows = [f"| {name} | " + " | ".join(a for a in ATTRIBUTES) + " |", "|---" * (len(ATTRIBUTES) + 1) + "|"]
    for who, rep in reports.items():
        rows.append(f"| {who} | " + " | ".join(f"{rep['accuracy'][a]:.0%}" if a in rep["accuracy"] else "-"
                                              for a in ATTRIBUTES) + " |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="work folder (our run, the tensors handed to the peer, images)")
    p.add_argument("--ours", default=None, help="an already trained run or model folder (needs --budget-cpu-s)")
    p.add_argument("--budget-cpu-s", type=float, default=None, help="the CPU time --ours' base stage took")
    p.add_argument("--base-steps", type=int, default=None, help="default: the shapes-128 base's steps")
    p.add_argument("--size", type=int, default=None, help="training scenes (default: the preset's)")
    p.add_argument("--prompts", type=int, default=None, help="first N prompts of each benchmark file (smoke)")
    p.add_argument("--peer-sample-steps", type=int, default=None, help="default: imagen-pytorch's 1000")
    p.add_argument("--cond-scale", type=float, default=3.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if (args.ours is None) != (args.budget_cpu_s is None):
        p.error("--ours and --budget-cpu-s go together")
    if not PEER_PY.exists():
        raise SystemExit(f"{PEER_PY} is missing: run ../shared/peers/imagen_pytorch.sh .peers/imagen-pytorch first")

    import torch

    from openimagen.cascade import Cascade
    from openimagen.data.embeddings import EmbeddingCache
    from openimagen.evaluate import load_benchmark_prompts, score_many
    from openimagen.text import text_encoder_from_spec
    from openimagen.train import train
    from openimagen.train.data import build_dataset, collect_captions, embed_dataset

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from openimagen.train.presets import shapes_128

    steps = args.base_steps or shapes_128().stages[0].steps
    cfg = base_config(steps, args.size or shapes_128().data.size)
    run = out / "ours"
    embed_dataset(cfg, run, progress=False)   # shared by both sides, outside both budgets
    if args.ours is None:
        before = cpu_s()
        train(cfg, run, progress=False)
        budget, model_dir = cpu_s() - before, run / "model"
    else:
        budget = args.budget_cpu_s
        model_dir = Path(args.ours) / "model" if (Path(args.ours) / "model").is_dir() else Path(args.ours)
    ours = Cascade.from_pretrained(model_dir)

    files = {name: load_benchmark_prompts(name)[:args.prompts] for name in ("templates", "natural")}
    prompts = [q for ps in files.values() for q in ps]
    setup_path = out / "peer_setup.json"
    if setup_path.is_file() and (out / "peer_data.pt").is_file():  # a killed run: the peer resumes from its state
        setup = json.loads(setup_path.read_text())
        if setup["budget_cpu_s"] != budget:
            raise SystemExit(f"{out} holds a peer run with a budget of {setup['budget_cpu_s']} CPU-s, not {budget}; "
                             "use a new folder")
    else:
        encoder = text_encoder_from_spec(cfg.text_encoder)
        dataset = build_dataset(cfg)
        cache = EmbeddingCache(run / "embeddings")
        L = encoder.max_length
        captions = collect_captions(dataset)
        embeds, mask = cache.lookup(captions, pad_to=L)
        eval_embeds, eval_mask = encoder.encode(prompts)
        pad = L - eval_embeds.shape[1]
        eval_embeds = torch.nn.functional.pad(eval_embeds, (0, 0, 0, pad))
        eval_mask = torch.nn.functional.pad(eval_mask, (0, pad))
        images = torch.stack([((dataset[i]["image"] + 1) * 127.5).round().to(torch.uint8) for i in range(len(dataset))])
        torch.save({"images": images, "embeds": embeds.half(), "mask": mask, "eval_embeds": eval_embeds,
                    "eval_mask": eval_mask}, out / "peer_data.pt")
        base_unet = ours.stages[0].unet
        setup = {"data": str(out / "peer_data.pt"), "out": str(out / "peer_images.pt"), "result": str(out / "peer.json"),
                 "budget_cpu_s": budget, "threads": 1, "batch": cfg.stages[0].batch_size, "seed": 0,
                 "target_params": sum(p.numel() for p in base_unet.parameters()),
                 "attn_levels": list(cfg.stages[0].stage.unet.attn_levels), "sample_timesteps": args.peer_sample_steps,
                 "cond_scale": args.cond_scale,
                 "state": str(out / "peer_state.pt")}
        setup_path.write_text(json.dumps(setup))
    subprocess.run([str(PEER_PY), str(ROOT / "benchmarks" / "peer_equal_budget.py"), str(out / "peer_setup.json")],
                   check=True)
    if args.ours is not None:  # the peer may have started while our base was still training: score the final one
        ours = Cascade.from_pretrained(model_dir)
    peer = json.loads((out / "peer.json").read_text())
    peer_images = torch.load(out / "peer_images.pt", weights_only=True)["images"].float() / 127.5 - 1

    ours_images = []
    for k in range(0, len(prompts), 10):
        ours_images.append(ours.generate(prompts[k:k + 10], stop_at=1, seed=k // 10, progress=False).images[-1])
    ours_images = torch.cat(ours_images)

    result = {"budget_cpu_s": round(budget, 1), "base_steps": steps, "peer": peer, "files": {}}
    lines = []
    start = 0
    for name, ps in files.items():
        n = len(ps)
        reps = {"openimagen": score_many(ours_images[start:start + n], ps).as_dict(),
                "imagen-pytorch": score_many(peer_images[start:start + n], ps).as_dict()}
        for r in reps.values():
            r.pop("items")
        result["files"][name] = reps
        lines += [""] + score_table(f"{name} ({n} prompts)", reps)
        start += n
    print(f"budget {budget:.0f} CPU-s each; ours {steps} steps, imagen-pytorch {peer['steps']} steps")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
