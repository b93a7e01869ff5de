"""Our base stage vs imagen-pytorch's, trained for the same CPU time on the same data and embeddings.

    # the base of a preset (+ overrides) against the peer, side by side: the peer trains in its own process
    # (one thread, the other core) while ours trains here; when ours is done the peer's budget becomes
    # ours' measured CPU time (--budget-cpu-s only bounds the peer until then: give more than ours will use)
    PYTHONPATH=src python benchmarks/bench_equal_budget.py runs/equal-budget --preset shapes-small \
        --set stages.0.steps=3000 --set stages.0.extras_warmup=500 --set data.size=5000 --set seed=1 \
        --budget-cpu-s 6000 --peer-sample-steps 100 --json benchmarks/results/equal_budget.json
    # smoke (a few minutes): a few steps, a few prompts, a short peer sampling loop
    PYTHONPATH=src python benchmarks/bench_equal_budget.py /tmp/eb --preset shapes-tiny --set stages.0.steps=12 \
        --budget-cpu-s 20 --prompts 4 --peer-sample-steps 10

Ours: stage 0 of the preset (with the --set overrides, exactly as `openimagen train --train-stages 0` runs
it), trained by `openimagen.train.train` for its configured steps; its cost is the CPU time (user + system,
getrusage) of that train() call, caption embedding excluded (done first, shared by both).
The peer: imagen-pytorch (its own venv, ../shared/peers/imagen_pytorch.sh) with its own defaults for
everything but size (a Unet of the closest parameter count, peer_imagen_pytorch.search; Adam 1e-4; fp32, the
faster precision on a CPU without native bf16), trained on the same images (our loop's own downsample to the
base's size) and the same embeddings, in random batches of our batch size, at the same time as ours (one core
each), until its training steps have used as much CPU time as ours (the script flags a difference over 2%). Both then draw one image per prompt of the benchmark files (ours: `score_base.py`'s way, seed 0,
10 steps, the stage's defaults; the peer: cond_scale 3, imagen-pytorch's README value, and
--peer-sample-steps of its continuous-time sampler, default its own 1000), enlarged 2x and scored by our
scorer, as `score_base.py` scores a base (so the numbers sit beside its table). Tesseract cannot read 32 px
signs: "word" means little at the base.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def score_table(name: str, reports: dict) -> list[str]:
    from openimagen.evaluate.scorer import ATTRIBUTES

    rows = [f"| {name} | " + " | ".join(a for a in ATTRIBUTES) + " |", "|---" * (len(ATTRIBUTES) + 1) + "|"]
    for who, rep in reports.items():
        rows.append(f"| {who} | " + " | ".join(f"{rep['accuracy'][a]:.1%}" if a in rep["accuracy"] else "-"
                                              for a in ATTRIBUTES) + " |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="work folder (our run, the tensors handed to the peer, the peer's images)")
    p.add_argument("--preset", default="shapes-small", help="whose stage 0 is ours (default: the bundled model's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, as for train")
    p.add_argument("--budget-cpu-s", type=float, required=True,
                   help="the peer's CPU seconds while ours trains (more than ours will use); then ours' measured time")
    p.add_argument("--prompts", type=int, default=None, help="first N prompts of each benchmark file (smoke)")
    p.add_argument("--files", nargs="+", default=["templates"], choices=["templates", "natural"])
    p.add_argument("--peer-sample-steps", type=int, default=None, help="default: imagen-pytorch's 1000")
    p.add_argument("--cond-scale", type=float, default=3.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not PEER_PY.exists():
        raise SystemExit(f"{PEER_PY} is missing: run ../shared/peers/imagen_pytorch.sh .peers/imagen-pytorch first")

    import torch
    import torch.nn.functional as F

    from openimagen.data.transforms import image_pyramid
    from openimagen.evaluate import load_benchmark_prompts, score_many
    from openimagen.stage import Stage
    from openimagen.text import text_encoder_from_spec
    from openimagen.train import load_train_config, train
    from openimagen.train.data import build_dataset, collect_captions, embed_dataset
    from openimagen.data.embeddings import EmbeddingCache

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(load_train_config(args.preset, overrides=args.set), train_stages=(0,))
    base = cfg.stages[0]
    run = out / "ours"
    embed_dataset(cfg, run, progress=False)   # shared by both sides, outside both budgets

    files = {name: load_benchmark_prompts(name)[:args.prompts] for name in args.files}
    prompts = [q for ps in files.values() for q in ps]
    setup_path = out / "peer_setup.json"
    if setup_path.is_file() and (out / "peer_data.pt").is_file():  # a killed run: the peer resumes from its state
        setup = json.loads(setup_path.read_text())
        if setup.get("bound_cpu_s", setup["budget_cpu_s"]) != args.budget_cpu_s:
            raise SystemExit(f"{out} holds a peer run with a budget of {setup.get('bound_cpu_s')} CPU-s, not "
                             f"{args.budget_cpu_s}; use a new folder")
    else:
        encoder = text_encoder_from_spec(cfg.text_encoder)
        dataset = build_dataset(cfg)
        L = encoder.max_length
        embeds, mask = EmbeddingCache(run / "embeddings").lookup(collect_captions(dataset), pad_to=L)
        eval_embeds, eval_mask = encoder.encode(prompts)
        pad = L - eval_embeds.shape[1]
        eval_embeds = F.pad(eval_embeds, (0, 0, 0, pad))
        eval_mask = F.pad(eval_mask, (0, pad))
        images = []
        for i in range(0, len(dataset), 256):   # our loop's own pyramid: the base sees these very pixels
            batch = torch.stack([dataset[j]["image"] for j in range(i, min(i + 256, len(dataset)))])
            low = image_pyramid(batch, cfg.resolutions)[base.stage.resolution]
            images.append(((low.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
        torch.save({"images": torch.cat(images), "embeds": embeds.half(), "mask": mask, "eval_embeds": eval_embeds,
                    "eval_mask": eval_mask}, out / "peer_data.pt")
        unet = Stage(base.stage).unet
        setup = {"data": str(out / "peer_data.pt"), "out": str(out / "peer_images.pt"), "result": str(out / "peer.json"),
                 "budget_cpu_s": args.budget_cpu_s, "bound_cpu_s": args.budget_cpu_s, "threads": 1, "batch": base.batch_size, "seed": 0,
                 "target_params": sum(p.numel() for p in unet.parameters()),
                 "attn_levels": list(base.stage.unet.attn_levels), "sample_timesteps": args.peer_sample_steps,
                 "cond_scale": args.cond_scale, "sample_threads": 2, "state": str(out / "peer_state.pt")}
        setup_path.write_text(json.dumps(setup))
    peer_proc = None
    if not (out / "peer.json").is_file():   # else the peer already finished (e.g. a run restarted to score)
        log = open(out / "peer.log", "a")
        peer_proc = subprocess.Popen([str(PEER_PY), str(ROOT / "benchmarks" / "peer_equal_budget.py"), str(setup_path)],
                                     stdout=log, stderr=subprocess.STDOUT)

    model_dir = run / "model"
    ours_cpu = json.loads((out / "ours_cpu.json").read_text())["train_cpu_s"] if (out / "ours_cpu.json").is_file() else None
    if ours_cpu is None:   # a resumed script whose training had finished keeps the CPU time measured then
        before = cpu_s()
        train(cfg, run, progress=False)
        ours_cpu = cpu_s() - before
        (out / "ours_cpu.json").write_text(json.dumps({"train_cpu_s": round(ours_cpu, 1)}) + "\n")
    if peer_proc is not None or not (out / "peer.json").is_file():
        # The peer (still training, it re-reads its setup every 20 steps) stops at exactly our CPU time
        setup["budget_cpu_s"] = round(ours_cpu, 1)
        tmp = setup_path.with_name(setup_path.name + ".tmp")
        tmp.write_text(json.dumps(setup))
        tmp.replace(setup_path)
    if peer_proc is not None and peer_proc.wait() != 0:
        raise SystemExit(f"the peer failed (exit {peer_proc.returncode}); see {out / 'peer.log'}")
    peer = json.loads((out / "peer.json").read_text())
    peer_images = torch.load(out / "peer_images.pt", weights_only=True)["images"].float() / 127.5 - 1

    from machine import machine
    from openimagen.load import load_model
    from openimagen.precision import resolve_precision

    result = {"preset": args.preset, "overrides": args.set, "budget_cpu_s": round(ours_cpu, 1),
              "ours": {"train_cpu_s": round(ours_cpu, 1), "steps": base.steps, "batch": base.batch_size,
                       "params": setup["target_params"], "precision": resolve_precision(cfg.mixed_precision, "cpu")},
              "peer": peer, "machine": machine(), "files": {}}
    cascade = load_model(str(model_dir))
    enlarge = lambda x: F.interpolate(x, scale_factor=2, mode="bilinear").clamp(-1, 1)  # as score_base.py
    lines, start, sheet = [], 0, []
    for name, ps in files.items():
        n = len(ps)
        # score_base.py's draw: the whole file in one call, seed 0, 10 steps, the stage's other defaults
        ours = cascade.generate(ps, seed=0, progress=False, stop_at=1, steps=[10], expand=False).images[-1]
        theirs = peer_images[start:start + n]
        reps = {"openimagen": score_many(enlarge(ours), ps), "imagen-pytorch": score_many(enlarge(theirs), ps)}
        result["files"][name] = {who: {"accuracy": r.accuracy, "counts": r.counts} for who, r in reps.items()}
        lines += [""] + score_table(f"{name} ({n} prompts)", result["files"][name])
        sheet += [ours[:12], theirs[:12]]
        start += n
    from PIL import Image   # a look at both: per file, a row of ours over a row of the peer's, 2x nearest

    from openimagen.data.transforms import to_pil

    R = 2 * peer_images.shape[-1]
    grid = Image.new("RGB", (12 * (R + 2), len(sheet) * (R + 2)), "white")
    for row, images in enumerate(sheet):
        for col, im in enumerate(to_pil(images)):
            grid.paste(im.resize((R, R), Image.NEAREST), (col * (R + 2), row * (R + 2)))
    grid.save(out / "sheet.png")
    off = abs(peer["train_cpu_s"] - ours_cpu) / ours_cpu
    result["unequal"] = off > 0.02
    over = f" (THE BUDGETS DIFFER BY {off:.1%}: not an equal comparison)" if off > 0.02 else ""
    print(f"ours {ours_cpu:.0f} CPU-s, {base.steps} steps{over}; "
          f"imagen-pytorch {peer['train_cpu_s']:.0f} CPU-s, {peer['steps']} steps")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
