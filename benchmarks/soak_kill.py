"""Kill soak: SIGKILL a training run at many moments, resume it each time, compare with a run never killed.

A tiny two-stage cascade (shapes-tiny: EMA, caption dropout 0.1) trains on a data folder of PNGs with
.txt captions (so captions are encoded into the embedding cache by the run itself), writing sample grids
and checkpoints often. The soak kills it `--kills` times: first at every named point inside a write
(openimagen/faults.py: checkpoint files, the checkpoint rename, `latest`, the model folder, embedding
shards and index, sample grids), then at random moments; after each kill it resumes with `--resume`.
After every kill every file the run left is audited: each checkpoint folder, the model folder, the
embedding cache and each sample grid must load. At the end the final checkpoint (weights, EMA, optimizer
tensors and JSON, counters) must equal, bit for bit, that of the same command run once without a kill.

    PYTHONPATH=src .venv/bin/python benchmarks/soak_kill.py               # 20 kills, ~10 minutes on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/soak_kill.py --kills 5     # a quick look

Writes benchmarks/results/soak_kill.json (kills survived / tried, unreadable files, per-kill record).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

STEPS = 24  # per stage
OVERRIDES = [f"stages.0.steps={STEPS}", f"stages.1.steps={STEPS}", "stages.0.batch_size=4", "stages.1.batch_size=4",
             "checkpoint_every=3", "keep_checkpoints=2", "sample_every=5", "sample_steps=2", "log_every=1",
             'sample_prompts=["a red circle on a gray background"]']
# Deterministic kills: POINT:N -- the N-th time this process reaches POINT (counted from its start).
NAMED = ["embeddings.shard:1", "embeddings.index:1", "checkpoint.file:1", "checkpoint.file:5", "checkpoint.rename:1",
         "checkpoint.latest:1", "train.published:1", "model.publish:1", "samples.grid:1", "checkpoint.file:10"]


def make_data(folder: Path, n: int = 24) -> None:
    """n shapes-world scenes as PNG files with .txt captions: a user's image folder."""
    from openimagen.data.shapes import ShapesWorld
    from openimagen.data.transforms import to_pil

    folder.mkdir(parents=True)
    world = ShapesWorld(resolution=32, size=n, seed=1)
    for i in range(n):
        item = world[i]
        to_pil(item["image"][None])[0].save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(item["caption"])


def command(data: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "openimagen.cli", "-q", "--threads", "1", "train", "--preset", "shapes-tiny",
           "--data", str(data), "--out", str(out)]
    for o in OVERRIDES:
        cmd += ["--set", o]
    return cmd + (["--resume"] if resume else [])


def start(data: Path, out: Path, resume: bool, fault: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    env.pop("OPENIMAGEN_FAULT", None)
    if fault:
        env["OPENIMAGEN_FAULT"] = f"{fault}:kill"
    return subprocess.Popen(command(data, out, resume), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class _NoEncoder:  # model folders are audited without loading the text encoder
    def to(self, device):
        return self


def audit(run: Path) -> list[str]:
    """Every file the run left must be readable (or absent): returns what was not."""
    from PIL import Image

    from openimagen.data.embeddings import INDEX, EmbeddingCache
    from openimagen.io import model_folder
    from openimagen.train import checkpoint as ckpt

    bad = []
    for _, p in ckpt.list_checkpoints(run / "checkpoints"):
        try:
            ckpt.load_checkpoint(p, 2)
        except Exception as e:  # noqa: BLE001 -- anything at all is a failure of the promise
            bad.append(f"{p}: {e}")
    if (run / "model" / "cascade.json").is_file():
        try:
            model_folder.load(run / "model", text_encoder=_NoEncoder())
        except Exception as e:  # noqa: BLE001
            bad.append(f"{run / 'model'}: {e}")
    if (run / "embeddings" / INDEX).is_file():
        try:
            EmbeddingCache(run / "embeddings").lookup([""])
        except Exception as e:  # noqa: BLE001
            bad.append(f"{run / 'embeddings'}: {e}")
    for png in sorted((run / "samples").glob("step-*.png")):
        try:
            with Image.open(png) as im:
                im.load()
        except Exception as e:  # noqa: BLE001
            bad.append(f"{png}: {e}")
    return bad


def final_state(run: Path) -> dict:
    """name -> bytes of everything the final checkpoint holds (tensors as raw bytes, JSON as text)."""
    from safetensors.torch import load_file

    d = run / "checkpoints" / f"step-{2 * STEPS:07d}"
    out = {}
    for k in (0, 1):
        for name in ("model", "ema", "optim"):
            for key, v in load_file(str(d / f"stage_{k}" / f"{name}.safetensors")).items():
                out[f"{k}/{name}/{key}"] = v.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
        out[f"{k}/optim.json"] = (d / f"stage_{k}" / "optim.json").read_text()
    state = json.loads((d / "state.json").read_text())
    out["state"] = json.dumps({k: state[k] for k in ("step", "stage_steps", "data_positions", "ema_updates")})
    return out


def soak(kills: int, seed: int, work: Path) -> dict:
    rng = random.Random(seed)
    data, ref, run = work / "data", work / "reference", work / "soaked"
    make_data(data)
    t0 = time.time()
    reference = start(data, ref, resume=False)  # alongside the first legs; 1 thread each
    plan = [("point", p) for p in NAMED[:kills]] + [("random", None)] * max(0, kills - len(NAMED))
    record, started = [], False
    for kind, fault in plan:
        p = start(data, run, resume=started, fault=fault)
        started = True
        if kind == "random":
            delay = rng.uniform(2.0, 14.0)  # from the import of torch to the end of a few checkpoints
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        killed = p.returncode == -signal.SIGKILL
        bad = audit(run)
        record.append({"kind": kind, "at": fault if kind == "point" else round(delay, 2), "killed": killed,
                       "returncode": p.returncode, "unreadable": bad,
                       "tail": "" if killed else out.decode(errors="replace")[-500:]})
        print(f"kill {len(record)}/{len(plan)} {kind} {record[-1]['at']}: "
              f"{'killed' if killed else f'exit {p.returncode}'}, unreadable files: {len(bad)}", flush=True)
        if p.returncode == 0:  # the run finished before this kill landed: start it again from scratch? no --
            break             # the soak keeps the folder; a finished run has nothing left to kill
    last = start(data, run, resume=True)
    out, _ = last.communicate()
    if last.returncode != 0:
        raise SystemExit(f"the final resume failed:\n{out.decode(errors='replace')[-3000:]}")
    rout, _ = reference.communicate()
    if reference.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{rout.decode(errors='replace')[-3000:]}")
    a, b = final_state(ref), final_state(run)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    landed = [r for r in record if r["killed"]]
    survived = [r for r in landed if not r["unreadable"]]
    return {
        "kills_tried": len(plan), "kills_landed": len(landed), "kills_survived": len(survived) if not differ else 0,
        "unreadable_files": sum(len(r["unreadable"]) for r in record),
        "final_state_bitwise_equal": not differ, "entries_compared": len(a), "entries_differing": differ[:20],
        "steps_per_stage": STEPS, "overrides": OVERRIDES, "seed": seed, "seconds": round(time.time() - t0, 1),
        "command": " ".join(command(Path("DATA"), Path("RUN"), True)[1:]),
        "kills": record,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seeds the random kill times")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_kill.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openimagen-soak-"))
    try:
        result = soak(args.kills, args.seed, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import machine  # benchmarks/machine.py

    result["machine"] = machine()
    result["measured"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"kills survived {result['kills_survived']} / tried {result['kills_tried']} (landed {result['kills_landed']}); "
          f"unreadable files {result['unreadable_files']}; final state bitwise equal: "
          f"{result['final_state_bitwise_equal']} ({result['entries_compared']} entries); {result['seconds']} s")


if __name__ == "__main__":
    main()
