"""DeepFloyd IF on CPU: our IFUNet / Cascade vs diffusers' UNet2DConditionModel / IFPipeline, same weights.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_deepfloyd.py            # writes benchmarks/results/deepfloyd.json

Topology: IF-I-M-like (IF-I-XL's layout: 4 levels, 3 resnets each, attention at 32/16/8 px, T5-XXL 4096-d
text pooled by 64 heads) with widths scaled to [128, 256, 384, 512] so it runs on a 2-core CPU. Random
weights are written once in the diffusers format; each side then loads the same folder.

Two workloads, batch 1 prompt (2 with classifier-free guidance), 64x64, 77 text tokens:
- `unet_forward`: one U-Net call on a (2, 3, 64, 64) input;
- `unet_forward_compiled`: the same call through `torch.compile` (inductor, default mode) on both sides; the
  first call (the compile) is timed apart (`first_call_s`: cold in each side's first process, from the inductor
  cache this invocation fills in later ones), the median is of the calls after it;
- `stage1_sample`: a whole stage-I sample, 10 DDPM steps, guidance 7, dynamic thresholding (precomputed T5
  embeddings on both sides, so the text encoder is not part of it).

Measurement. Each (side, workload, dtype) runs in its own fresh subprocess, and the sides alternate, so
neither inherits the other's allocator state and load from other processes on the machine hits both alike.
Time: median of `--repeats` runs after one warm-up. Memory: peak resident set size of the process
(Linux VmHWM). `peak_rss_mb` is the whole process (imports + weights + work); `work_peak_mb` is the peak
above the resident size after a warm-up run, after resetting the high-water mark via
/proc/self/clear_refs: activations and temporaries only, whatever each library imports. glibc's malloc
keeps freed blocks and moves its mmap threshold as it goes, which would hide or invent memory; both
sides therefore run with MALLOC_MMAP_THRESHOLD_=65536, so every tensor above 64 KiB is its own mapping
and RSS follows the tensors that are alive.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNET = dict(
    sample_size=64, in_channels=3, out_channels=6, layers_per_block=3, block_out_channels=[128, 256, 384, 512],
    down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
    up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", act_fn="gelu", resnet_time_scale_shift="scale_shift",
    attention_head_dim=64, cross_attention_dim=512, encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
    addition_embed_type="text", addition_embed_type_num_heads=64, cross_attention_norm="group_norm",
)
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", thresholding=True,
                 dynamic_thresholding_ratio=0.95, sample_max_value=1.5, prediction_type="epsilon",
                 variance_type="learned_range")
STEPS, GUIDANCE, TOKENS = 10, 7.0, 77


# ----------------------------------------------------------------------------- memory


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024  # MB
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


# ----------------------------------------------------------------------------- one side, one process


def _inputs(torch, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g).to(dtype)
    text = torch.randn(2, TOKENS, 4096, generator=g).to(dtype)
    return x, text


def child(side: str, workload: str, folder: str, dtype_name: str, repeats: int, threads: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    x, text = _inputs(torch, dtype)
    # "unet_forward_compiled": the same forward through torch.compile (inductor, default mode) on both sides
    compiled = workload.endswith("_compiled")
    workload = workload.removesuffix("_compiled")
    if side == "ours":
        sys.path.insert(0, str(ROOT / "src"))
        from openimagen.checkpoints.deepfloyd_if import load_stage
        from openimagen.cascade import Cascade
        from openimagen.text import PrecomputedEncoder

        stage = load_stage(Path(folder), stage=1, dtype=dtype)
        mask = torch.ones(TOKENS, dtype=torch.bool)
        encoder = PrecomputedEncoder({"": (text[0].float(), mask), "p": (text[1].float(), mask)})
        cascade = Cascade(encoder, [stage])
        if workload == "unet_forward":
            net = torch.compile(stage.unet) if compiled else stage.unet
            run = lambda: net(x, torch.tensor([500.0, 500.0]), text)
        else:
            run = lambda: cascade.generate("p", steps=STEPS, guidance=GUIDANCE, seed=0, progress=False)
    else:
        from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).eval()
        pipe = IFPipeline(tokenizer=None, text_encoder=None, unet=unet,
                          scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
                          safety_checker=None, feature_extractor=None, watermarker=None,
                          requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        if workload == "unet_forward":
            net = torch.compile(unet) if compiled else unet
            run = lambda: net(x, torch.tensor([500, 500]), encoder_hidden_states=text).sample
        else:
            run = lambda: pipe(prompt_embeds=text[1:], negative_prompt_embeds=text[:1], num_inference_steps=STEPS,
                               guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0),
                               output_type="pt").images
    times = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        run()  # warm-up (and the compile, when compiled); also pages in weights that safetensors mapped lazily
        first = time.perf_counter() - t0
        gc.collect()
        base = _status("VmRSS")
        _reset_peak()
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        work_peak = _status("VmHWM") - base
    return {"side": side, "workload": workload + ("_compiled" if compiled else ""), "dtype": dtype_name,
            "times_s": times, "first_call_s": first,
            "work_peak_mb": work_peak, "peak_rss_mb": _status("VmHWM"),
            "params": sum(p.numel() for p in (stage.unet if side == "ours" else unet).parameters())}


# ----------------------------------------------------------------------------- driver


def write_weights(folder: Path) -> None:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(**UNET).save_pretrained(folder / "unet")
    DDPMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed U-Net forwards per process")
    ap.add_argument("--sample-repeats", type=int, default=1, help="timed stage-I samples per process")
    ap.add_argument("--rounds", type=int, default=2, help="alternating subprocess rounds per side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="fp32:unet_forward,fp32:stage1_sample,bf16:unet_forward",
                    help="dtype:workload pairs (workloads: unet_forward, unet_forward_compiled, stage1_sample; "
                         "dtypes: fp32, bf16)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "deepfloyd.json"))
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, workload, folder, dtype, repeats, threads = args.child
        print(json.dumps(child(side, workload, folder, dtype, int(repeats), int(threads))))
        return

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "if-i-m-like"
        write_weights(folder)
        for pair in args.runs.split(","):
                dtype, workload = pair.split(":")
                repeats = args.repeats if workload.startswith("unet_forward") else args.sample_repeats
                runs = {"ours": [], "diffusers": []}
                for _ in range(args.rounds):
                    for side in ("ours", "diffusers"):
                        cmd = [sys.executable, __file__, "--child", side, workload, str(folder), dtype,
                               str(repeats), str(args.threads)]
                        # one inductor cache for this invocation: each side's first compile is cold, later ones
                        # warm, whatever earlier runs left in the user's cache
                        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MALLOC_MMAP_THRESHOLD_="65536",
                                   TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor-cache"))
                        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                        if proc.returncode:
                            sys.exit(f"{side} {workload} {dtype} failed:\n{proc.stderr[-3000:]}")
                        runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                for side, rs in runs.items():
                    times = [t for r in rs for t in r["times_s"]]
                    row = {"side": side, "workload": workload, "dtype": dtype, "median_s": statistics.median(times),
                           "times_s": times, "work_peak_mb": max(r["work_peak_mb"] for r in rs),
                           "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "params": rs[0]["params"],
                           "first_call_s": [r["first_call_s"] for r in rs]}
                    results.append(row)
                    print(f"{dtype:5s} {workload:14s} {side:10s} {row['median_s']:8.3f} s  "
                          f"work peak {row['work_peak_mb']:7.1f} MB  process peak {row['peak_rss_mb']:7.1f} MB",
                          flush=True)
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import machine

    meta = {"command": "PYTHONPATH=src .venv/bin/python benchmarks/bench_deepfloyd.py " + " ".join(sys.argv[1:]),
            "unet_config": UNET, "batch": "1 prompt x 2 (CFG)", "resolution": 64, "steps": STEPS,
            "guidance": GUIDANCE, "threads": args.threads, "forward_repeats_per_process": args.repeats,
            "sample_repeats_per_process": args.sample_repeats,
            "processes_per_side": args.rounds, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": machine(),
            "load_average_after": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
