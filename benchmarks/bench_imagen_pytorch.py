"""Side by side with imagen-pytorch: training throughput, guided generation time, FLOP utilisation.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_imagen_pytorch.py

One command runs both systems: this process times ours (our venv, torch of .venv) and drives
benchmarks/peer_imagen_pytorch.py in the peer's venv (set up by ../shared/peers/imagen_pytorch.sh)
through a pipe. The two never compute at the same time: they take turns (ABAB), each with
torch.set_num_threads(--threads) while the other waits, and every figure is a median of the turns.
One thread each by default: on a 2-core machine shared with other work, a 2-thread OpenMP step
stalls whenever one of its threads is descheduled (we saw 5-10x slower, erratic steps at load 4),
while a 1-thread step degrades gracefully. --threads 2 is there for a quiet machine.

  training    the base stage of our shapes cascade (32 px, `shapes-base`, MiniLM width 384, 16 tokens)
              vs an imagen-pytorch Unet + Imagen with the closest parameter count on a small grid of
              (dim, dim_mults, num_resnet_blocks); same batch, resolution, text length and width. A step is
              forward + loss + backward + optimiser update (+ our gradient clipping). EMA: neither side.
  generation  4 guided images at 32 px: ours = Cascade.generate(stop_at=1) with the bundled model's
              sampler settings; peer = Imagen.sample(cond_scale=...) with its default 1000 steps.
  FLOPs       our training step counted with FlopCounterMode, over the measured bf16 matmul peak.
Results: benchmarks/results/imagen_pytorch.json and a section of benchmarks/README.md (--readme).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, matmul_peak  # noqa: E402
from report_imagen_pytorch import table, write_readme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_PY = ROOT / ".peers" / "imagen-pytorch" / "bin" / "python-offline"
BUNDLED = ROOT / "src" / "openimagen" / "assets" / "shapes-cascade" / "stage_0" / "config.json"


def median(xs):
    return statistics.median(xs)


def unzero_(module: torch.nn.Module, seed: int) -> None:
    """Give all-zero weights small random values, as the peer script does: untrained weights must not make
    any of the work trivial (our output convs start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


# ------------------------------------------------------------------------------------------------
# the peer, in its own process


class PeerProcess:
    def __init__(self, setup: dict):
        if not PEER_PY.exists():
            raise SystemExit(f"{PEER_PY} is missing: run ../shared/peers/imagen_pytorch.sh first")
        self.proc = subprocess.Popen([str(PEER_PY), str(ROOT / "benchmarks" / "peer_imagen_pytorch.py"),
                                      json.dumps(setup)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the peer process died (exit code {self.proc.poll()}); run the peer script by hand "
                             "to see its error")
        out = json.loads(line)
        if "error" in out:
            raise SystemExit(f"peer: {out['error']}")
        return out

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        return self._read()

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------------
# ours: the trainer's own loss for stage 0 of shapes-small, and its optimiser recipe


class Ours:
    def __init__(self, args):
        from openimagen.stage import Stage
        from openimagen.train.loop import adamw, stage_loss
        from openimagen.train.presets import TRAIN_PRESETS

        torch.manual_seed(args.seed)
        self.cfg = TRAIN_PRESETS["shapes-small"]()
        self.stage_loss = stage_loss
        self.stage = Stage(self.cfg.stages[0].stage)
        self.unet = self.stage.unet
        unzero_(self.unet, args.seed)
        o = self.cfg.optim
        self.opt = adamw(list(self.unet.parameters()), o, torch.device("cpu"))  # the trainer's optimiser
        g = torch.Generator().manual_seed(args.seed + 1)
        B, L, D, R = args.batch, args.text_len, self.unet.cfg.text_embed_dim, self.stage.resolution
        self.images = {R: torch.rand(B, 3, R, R, generator=g) * 2 - 1}
        embeds = torch.randn(B, L, D, generator=g)
        lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
        mask = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
        self.embeds, self.mask = embeds * mask[:, :, None], mask
        self.captions = [f"caption {i}" for i in range(B)]
        self.rows = {c: i for i, c in enumerate(self.captions)}
        self.step_count = 0

    def lookup(self, captions):
        """The trainer's embedding cache, replaced by fixed tensors; a dropped caption ("") gets an empty
        prompt's shape (two real tokens), as MiniLM encodes it."""
        rows = [self.rows.get(c, 0) for c in captions]
        e, m = self.embeds[rows].clone(), self.mask[rows].clone()
        for i, c in enumerate(captions):
            if c == "":
                m[i] = torch.arange(m.shape[1]) < 2
                e[i] = e[i] * m[i][:, None]
        return e, m

    def train_step(self, bf16: bool) -> None:
        # As train/loop.py: stage_loss and backward under the accelerator's autocast, clip, AdamW.
        from openimagen.train.loop import step_generator

        self.unet.train()
        g = step_generator(self.cfg.seed, 0, self.step_count)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = self.stage_loss(self.cfg, 0, self.unet, self.stage, self.images, self.captions, self.lookup, g)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1

    def train(self, bf16: bool, warmup: int, steps: int) -> list[float]:
        for _ in range(warmup):
            self.train_step(bf16)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.train_step(bf16)
            times.append(time.perf_counter() - t0)
        return times

    def train_flops(self, bf16: bool) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.train_step(bf16)
        return counter.get_total_flops()

    # -- generation -------------------------------------------------------------------------------

    def sampling_settings(self) -> tuple[dict, str]:
        keys = ("sampler", "steps", "guidance", "threshold", "threshold_percentile")
        if BUNDLED.is_file():
            cfg = json.loads(BUNDLED.read_text())
            return {k: cfg[k] for k in keys}, str(BUNDLED.relative_to(ROOT))
        sc = self.stage.config
        return {k: getattr(sc, k) for k in keys}, "train preset shapes-small, stage 0 (no bundled model yet)"

    def cascade(self, settings: dict):
        from openimagen.cascade import Cascade
        from openimagen.stage import Stage
        from openimagen.text import PrecomputedEncoder

        config = dataclasses.replace(self.stage.config, **settings)
        stage = Stage(config, self.unet).eval()
        empty = (self.embeds[0, :2] * 0 + 0.1, torch.ones(2, dtype=torch.bool))  # the "" prompt's encoding
        return Cascade(PrecomputedEncoder({"": empty}), [stage])

    @torch.no_grad()
    def generate(self, cascade, n: int, autocast) -> float:
        prompts = [f"prompt {i}" for i in range(n)]
        t0 = time.perf_counter()
        out = cascade.generate(prompts, text_embeds=(self.embeds[:n], self.mask[:n]), stop_at=1, seed=0,
                               progress=False, autocast_dtype=autocast)
        seconds = time.perf_counter() - t0
        assert out.images[0].shape == (n, 3, self.stage.resolution, self.stage.resolution)
        assert torch.isfinite(out.images[0]).all()
        return seconds


# ------------------------------------------------------------------------------------------------
# the run


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    ours = Ours(args)
    setup = {"threads": args.threads, "batch": args.batch, "resolution": ours.stage.resolution,
             "text_len": args.text_len, "text_dim": ours.unet.cfg.text_embed_dim,
             "target_params": ours.unet.num_params(), "seed": args.seed,
             "attn_levels": list(ours.unet.cfg.attn_levels)}
    peer = PeerProcess(setup)
    print(f"ours {setup['target_params']:,} params; imagen-pytorch {peer.info['params']:,} params "
          f"{peer.info['unet_kwargs']}", flush=True)

    # -- training: ABAB turns, the order of the sides rotating every round ----------------------
    # bf16 runs only where the CPU computes it natively (precision.py), or with --bf16: where it is emulated
    # (AVX2-only CPUs) a bf16 step is ~50-100x slower and nobody would train that way.
    from openimagen.precision import bf16_slowdown, resolve_precision

    auto = resolve_precision("auto", "cpu")
    bf16 = auto == "bf16" or args.bf16
    sides = {
        "ours_fp32": lambda w, n: ours.train(False, w, n),
        "peer_fp32": lambda w, n: peer.ask(cmd="train", precision="fp32", warmup=w, steps=n)["times"],
    }
    if bf16:
        sides["ours_bf16"] = lambda w, n: ours.train(True, w, n)
        sides["peer_bf16"] = lambda w, n: peer.ask(cmd="train", precision="bf16", warmup=w, steps=n)["times"]
    names, times = list(sides), {k: [] for k in sides}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            times[k] += sides[k](args.warmup if r == 0 else 1, args.steps)
        print(f"train round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {median(times[k]):.3f}s" for k in names),
              flush=True)
    train = {k: {"step_s_median": median(v), "images_per_s": args.batch / median(v), "step_s": v}
             for k, v in times.items()}
    peer_best = min((k for k in ("peer_fp32", "peer_bf16") if k in train), key=lambda k: train[k]["step_s_median"])
    ours_auto = f"ours_{auto}"
    train_ratio = train[ours_auto]["images_per_s"] / train[peer_best]["images_per_s"]

    # -- generation ---------------------------------------------------------------------------------
    settings, source = ours.sampling_settings()
    cascade = ours.cascade(settings)
    ours.generate(cascade, args.images, None)  # warm-up
    # Other base-stage sampler settings, timed beside the defaults (bench_samplers.py scores them).
    alts = {a: ours.cascade({**settings, "sampler": a.split(":")[0], "steps": int(a.split(":")[1])})
            for a in filter(None, args.alt.split(","))}
    k1, k2 = (int(k) for k in args.peer_steps.split(","))
    cond_scale = settings["guidance"]
    peer.ask(cmd="sample", timesteps=2, images=args.images, cond_scale=cond_scale)  # warm-up
    gen = {"ours_fp32": [], f"peer_{k1}": [], f"peer_{k2}": [], **({"ours_bf16": []} if bf16 else {})}
    for r in range(args.gen_rounds):
        gen["ours_fp32"].append(ours.generate(cascade, args.images, None))
        for k in (k1, k2):
            gen[f"peer_{k}"].append(peer.ask(cmd="sample", timesteps=k, images=args.images,
                                             cond_scale=cond_scale)["seconds"])
        if bf16:
            gen["ours_bf16"].append(ours.generate(cascade, args.images, torch.bfloat16))
        for a, c in alts.items():
            gen.setdefault(f"ours_alt {a}", []).append(ours.generate(c, args.images, None))
        print(f"generation round {r + 1}/{args.gen_rounds}: ours fp32 {gen['ours_fp32'][-1]:.2f}s, "
              f"bf16 {gen['ours_bf16'][-1] if bf16 else float('nan'):.2f}s; peer {k1} steps {gen[f'peer_{k1}'][-1]:.2f}s, "
              f"{k2} steps {gen[f'peer_{k2}'][-1]:.2f}s", flush=True)
    # The peer's loop costs a + b * steps (the same two Unet passes every step): fit a, b on two lengths.
    t1, t2 = median(gen[f"peer_{k1}"]), median(gen[f"peer_{k2}"])
    per_step = (t2 - t1) / (k2 - k1)
    fixed = t1 - k1 * per_step
    peer_1000 = fixed + 1000 * per_step
    peer_full = None
    if args.peer_full:
        peer_full = peer.ask(cmd="sample", timesteps=1000, images=args.images, cond_scale=cond_scale)["seconds"]
        print(f"peer full 1000 steps: {peer_full:.1f}s (fit said {peer_1000:.1f}s)", flush=True)
    peer_gen_s = peer_full if peer_full is not None else peer_1000

    # -- FLOPs and the machine's matmul peak ----------------------------------------------------------
    flops_ours = ours.train_flops(auto == "bf16")
    flops_peer = peer.ask(cmd="flops")["train_step_flops"]
    peer.close()
    peak = {"fp32": matmul_peak(torch.float32), **({"bf16": matmul_peak(torch.bfloat16)} if bf16 else {})}
    achieved = flops_ours / train[ours_auto]["step_s_median"]

    return {
        "command": "PYTHONPATH=src .venv/bin/python benchmarks/bench_imagen_pytorch.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {**machine(), "torch_peer": peer.info["torch"], "imagen_pytorch": peer.info["imagen_pytorch"],
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "threads": {"ours": torch.get_num_threads(), "peer": peer.info["threads"],
                    "how": "both sides set torch.set_num_threads(threads) and run alternately, never at once"},
        "setup": {**setup, "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup},
        "models": {
            "ours": {"params": ours.unet.num_params(), "preset": "shapes-base",
                     "unet": dataclasses.asdict(ours.unet.cfg),
                     "train": {"parameterization": ours.stage.config.parameterization.kind,
                               "schedule": ours.stage.config.schedule.kind,
                               "min_snr_gamma": ours.cfg.stages[0].min_snr_gamma,
                               "optimizer": dataclasses.asdict(ours.cfg.optim),
                               "precision": f"auto = {auto} on this CPU (bf16 matmul {bf16_slowdown():.0f}x fp32's time)"}},
            "peer": {"params": peer.info["params"], "unet_kwargs": peer.info["unet_kwargs"],
                     "param_ratio_peer_over_ours": peer.info["params"] / ours.unet.num_params(),
                     "search_grid": peer.info["grid"],
                     "train": "Imagen defaults (cosine, eps objective, min-SNR 5, cond_drop_prob 0.1); "
                              "ImagenTrainer's optimiser defaults: Adam lr 1e-4, betas (0.9, 0.99), no clipping"},
        },
        "training": {**train, "precision_auto": auto, "ours_auto": ours_auto, "bf16_measured": bf16,
                     "peer_best": peer_best, "ratio_ours_auto_over_peer_best": train_ratio,
                     "floor": 3.0, "meets_floor": train_ratio >= 3.0},
        "generation": {
            "images": args.images, "resolution": ours.stage.resolution,
            "ours": {"settings": settings, "settings_source": source, "fp32_s": gen["ours_fp32"],
                     "bf16_s": gen.get("ours_bf16"), "fp32_s_median": median(gen["ours_fp32"]),
                     "bf16_s_median": median(gen["ours_bf16"]) if bf16 else None,
                     "alternatives_fp32": {a: {"s": gen[f"ours_alt {a}"], "s_median": median(gen[f"ours_alt {a}"]),
                                               "ratio_peer_over": peer_gen_s / median(gen[f"ours_alt {a}"])}
                                           for a in alts}},
            "peer": {"default_steps": 1000, "cond_scale": cond_scale, "timed_steps": [k1, k2],
                     "timed_s": {str(k1): gen[f"peer_{k1}"], str(k2): gen[f"peer_{k2}"]},
                     "per_step_s": per_step, "fixed_s": fixed,
                     "extrapolated_1000_s": peer_1000, "measured_1000_s": peer_full,
                     "seconds_used": peer_gen_s,
                     "how": "measured 1000 steps" if peer_full is not None else
                            f"from Imagen.sample runs with the same Unet at timesteps={k1} and {k2} (medians), fitted "
                            "a + b * steps and evaluated at 1000: every step runs the same two Unet passes "
                            "(conditional, then unconditional)"},
            "ratio_peer_over_ours_fp32": peer_gen_s / median(gen["ours_fp32"]),
            "ratio_peer_over_ours_bf16": peer_gen_s / median(gen["ours_bf16"]) if bf16 else None,
            "ratio_peer_over_ours_auto": peer_gen_s / median(gen[f"ours_{auto}"]),
            "floor": 100, "meets_floor": peer_gen_s / median(gen[f"ours_{auto}"]) >= 100,
        },
        "flops": {"ours_train_step": flops_ours, "peer_train_step_fp32": flops_peer,
                  "ours_achieved_flops_per_s": achieved, "precision": auto,
                  **{f"matmul_peak_{k}": v for k, v in peak.items()},
                  "utilisation": achieved / peak[auto]["flops_per_s"], "floor": 0.6,
                  "how": f"FlopCounterMode (matmul, conv, attention; forward + backward) over the median {auto} step "
                         f"time; peak = best single square {auto} torch.matmul (512-2048) on this machine at the same thread count. "
                         "Step times are medians that include moments when other processes hold the core, "
                         "so on a loaded machine the utilisation is understated"},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="per side; the sides never run at once")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4, help="ABAB training rounds")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per side per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--gen-rounds", type=int, default=3)
    p.add_argument("--peer-steps", default="10,50", help="two timed peer step counts; the fit is extrapolated to 1000")
    p.add_argument("--peer-full", action="store_true", help="also time the peer's full 1000 steps (minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alt", default="dpmpp_3m:15,dpmpp_2m:15,dpmpp_2m:10",
                   help="other base sampler:steps settings to time beside the defaults ('' for none)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 where the CPU only emulates it (very slow)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "imagen_pytorch.json"))
    p.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"), help="'' to skip")
    p.add_argument("--render", action="store_true", help="only rewrite the README section from --out")
    args = p.parse_args()
    if args.render:
        write_readme(Path(args.readme), json.loads(Path(args.out).read_text()))
        return
    t0 = time.perf_counter()
    res = run(args)
    res["elapsed_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    if args.readme:
        write_readme(Path(args.readme), res)
    print(f"wrote {out}" + (f" and {args.readme}" if args.readme else ""))


if __name__ == "__main__":
    main()
