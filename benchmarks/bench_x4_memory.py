"""Stage III memory: decoding a 256x256 latent (1024 px) with the x4 upscaler's VAE, and the planned GPU peak.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_x4_memory.py            # measure, write JSON + README
    PYTHONPATH=src .venv/bin/python benchmarks/bench_x4_memory.py --render   # README section from the JSON

The real `vae/config.json` of stabilityai/stable-diffusion-x4-upscaler with random weights (seed 0), fp32 on
the CPU, one 1 x 4 x 256 x 256 latent: ours untiled, ours tiled (64-latent tiles, 16 overlap), diffusers'
`AutoencoderKL.decode` untiled and with `enable_tiling()` (its tiles for this config: 64 latent, 25% overlap).
Each case runs alone in a fresh subprocess, one after another, so its peak RSS (getrusage ru_maxrss) is its
own; the RSS after building the model and the latent is recorded too, so peak - base is the decode's own.
The U-Net's activation peak is measured the same way (one forward, batch 2 = guidance, fp32) at a 64x64
latent and scaled by 16 to 256x256 (activations grow with positions; SDPA attention needs no score matrix),
which with the parameter counts gives the planned per-model GPU peak (no GPU here: unmeasured).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "x4_memory.json"
SECTION = "## Stage III (x4 upscaler): VAE decode memory and the planned GPU peak"
X4_VAE = dict(act_fn="silu", block_out_channels=[128, 256, 512], down_block_types=["DownEncoderBlock2D"] * 3,
              in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
              sample_size=256, up_block_types=["UpDecoderBlock2D"] * 3, scaling_factor=0.08333)
X4_UNET = dict(attention_head_dim=8, block_out_channels=[256, 512, 512, 1024], cross_attention_dim=1024,
               down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3, in_channels=7, layers_per_block=2,
               num_class_embeds=1000, only_cross_attention=[True, True, True, False], out_channels=4,
               up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"], use_linear_projection=True)
CASES = ("ours_untiled", "ours_tiled", "diffusers_untiled", "diffusers_tiled", "unet_forward_64")
PARAMS = {"IF-I-XL U-Net": 4_304_695_110, "T5-XXL encoder": 4_762_310_656, "IF-II-L U-Net": 1_243_277_190,
          "x4 U-Net": 473_398_020, "x4 VAE": 55_325_927, "x4 CLIP": 340_387_840}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(case: str, latent: int) -> dict:
    torch.manual_seed(0)
    if case == "unet_forward_64":
        from openimagen.nn.sd_unet import SDUNet, SDUNetConfig

        net = SDUNet(SDUNetConfig.from_diffusers_config(X4_UNET)).eval()
        x, ctx = torch.randn(2, 7, 64, 64), torch.randn(2, 77, 1024)
        call = lambda: net(x[:, :4], torch.tensor([500.0, 500.0]), ctx, lowres=x[:, 4:],  # noqa: E731
                           noise_level=torch.tensor([100.0, 100.0]))
    elif case.startswith("ours"):
        from openimagen.nn.vae import AutoencoderKL, VAEConfig
        from openimagen.nn.vae_tiling import decode_tiled

        vae = AutoencoderKL(VAEConfig.from_diffusers_config(X4_VAE)).eval()
        z = torch.randn(1, 4, latent, latent)
        call = (lambda: decode_tiled(vae, z, tile=64, overlap=16)) if case == "ours_tiled" else (lambda: vae.decode(z))
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(**X4_VAE).eval()
        if case == "diffusers_tiled":
            vae.enable_tiling()
        z = torch.randn(1, 4, latent, latent)
        call = lambda: vae.decode(z).sample  # noqa: E731
    base = _rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = call()
    seconds = time.perf_counter() - t0
    return {"case": case, "seconds": seconds, "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
            "shape": list(out.shape), "threads": torch.get_num_threads()}


def measure(latent: int, threads: int) -> dict:
    from machine import machine

    rows = []
    data = {"machine": machine(), "latent": latent, "rows": rows}
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--latent", str(latent), "--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
        with open("/proc/loadavg") as f:
            data["load_after"] = f.read().split()[:3]
        data["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        RESULTS.write_text(json.dumps(data, indent=1))  # after every case: a long run keeps what it measured
    return data


def render(data: dict) -> str:
    rows = {r["case"]: r for r in data["rows"]}
    m = data["machine"]
    lines = [SECTION, "",
             f"Measured {data['measured']} on {m['cpu']} ({m['logical_cpus']} logical CPUs, shared; load after "
             f"{' '.join(data['load_after'])}), torch {m['torch_ours']}, {data['rows'][0]['threads']} thread, fp32, "
             f"random weights. One {data['latent']}x{data['latent']} latent decoded to "
             f"{4 * data['latent']} px with the x4 upscaler's real vae/config.json; each case in its own "
             "subprocess (one after another by default)." + (f" Note: {data['note']}." if data.get("note") else ""), "",
             "| decode | seconds | peak RSS (MB) | RSS before decode (MB) | decode's own (MB) |", "|---|---|---|---|---|"]
    names = {"ours_untiled": "ours, untiled", "ours_tiled": "ours, tiled (64 latent, 16 overlap, feathered)",
             "diffusers_untiled": "diffusers, untiled", "diffusers_tiled": "diffusers, enable_tiling()"}
    for k, name in names.items():
        r = rows.get(k)
        if r is None:
            lines.append(f"| {name} | not measured (the run was stopped for time) | | | |")
            continue
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f} |")
    u = rows.get("unet_forward_64")
    act64 = float("nan") if u is None else u["peak_rss_mb"] - u["base_rss_mb"]
    act256_fp16 = act64 * 16 / 2
    vae = rows.get("ours_tiled") or rows["ours_untiled"]
    vae_own = vae["peak_rss_mb"] - vae["base_rss_mb"]
    lines += ["", "Planned GPU peak per model (**unmeasured: no GPU**), each on the accelerator only while it runs "
              "(`--offload`): weights from parameter counts in fp16 (the x4 VAE in fp32) plus activations. The x4 "
              f"U-Net's activations were measured on the CPU: {act64:.0f} MB for one fp32 forward of batch 2 at a 64x64 "
              f"latent, x16 for 256x256 and /2 for fp16 = {act256_fp16 / 1024:.1f} GB; the tiled VAE decode's own "
              f"{vae_own:.0f} MB (fp32) is its activation peak. IF's own models are from deepfloyd_if.md (parameters;"
              " activations at 64/256 px are small next to the weights; the T5-XXL count is the public encoder's)."
              " Stage III decodes latents over 128 per side in tiles (LatentStage.tile_latents_above), so its VAE row"
              " is the tiled one.", "",
              "| model | parameters | weights (GB) | planned peak while it runs (GB) |", "|---|---|---|---|"]
    plan = {"T5-XXL encoder": (2, 0.1), "IF-I-XL U-Net": (2, 0.5), "IF-II-L U-Net": (2, 1.0),
            "x4 CLIP": (2, 0.05), "x4 U-Net": (2, act256_fp16 / 1024), "x4 VAE": (4, vae_own / 1024)}
    for name, (bytes_per, act) in plan.items():
        w = PARAMS[name] * bytes_per / 1e9
        lines.append(f"| {name} | {PARAMS[name]:,} | {w:.2f} | {w + act:.1f} |")
    lines += ["", "Activation figures for T5 and IF-I/II are allowances, not measurements. With offload the largest "
              "single model decides the peak, so the three-stage cascade is planned to fit a 16 GB GPU.", "",
              "Reproduce (each decode is about 12 TFLOP: 5-30 minutes per case on 2 shared cores, depending on load):", "",
              "```", "PYTHONPATH=src .venv/bin/python benchmarks/bench_x4_memory.py", "```", "",
              "Raw numbers: `benchmarks/results/x4_memory.json`.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=CASES)
    p.add_argument("--latent", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case, args.latent)))
        return
    sys.path.insert(0, str(HERE))
    from machine import replace_section

    if not args.render:
        measure(args.latent, args.threads)
    replace_section(HERE / "README.md", SECTION, render(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
