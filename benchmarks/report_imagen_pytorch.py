"""The README section and table of bench_imagen_pytorch.py, rendered from its results JSON."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_words, replace_section  # noqa: E402

SECTION = "## Training throughput and generation vs imagen-pytorch"


def table(res: dict) -> str:
    tr, ge, fl, m = res["training"], res["generation"], res["flops"], res["models"]
    B = res["setup"]["batch"]
    k1, k2 = ge["peer"]["timed_steps"]
    peer_how = ("measured" if ge["peer"]["measured_1000_s"] is not None
                else f"extrapolated linearly from timed {k1}- and {k2}-step runs")
    s = ge["ours"]["settings"]
    auto = tr["precision_auto"]
    lines = [
        f"Measured {res['date']} on {machine_words(res['machine'])}, "
        f"torch threads per side: {res['threads']['ours']}, sides run alternately (ABAB, medians); load average "
        f"{res['machine']['load_avg_before'][0]:.2f} before, {res['machine']['load_avg_after'][0]:.2f} after "
        f"(the machine is shared, so expect noise). torch {res['machine']['torch_ours']} (ours), "
        f"{res['machine']['torch_peer']} (imagen-pytorch {res['machine']['imagen_pytorch']}).",
        "",
        f"U-Nets: ours `shapes-base` {m['ours']['params']:,} parameters; imagen-pytorch `Unet("
        + ", ".join(f"{k}={v}" for k, v in m["peer"]["unet_kwargs"].items()) + f")` {m['peer']['params']:,} "
        f"({100 * (m['peer']['param_ratio_peer_over_ours'] - 1):+.1f}%). 32 px, batch {B}, "
        f"{res['setup']['text_len']} text tokens of width {res['setup']['text_dim']}.",
        "",
        "| measurement | ours | imagen-pytorch | ratio |",
        "|---|---|---|---|",
        f"| training, images/s (ours at precision auto = {auto}; peer's faster: {tr['peer_best'][5:]}) "
        f"| {tr[tr['ours_auto']]['images_per_s']:.1f} | {tr[tr['peer_best']]['images_per_s']:.1f} "
        f"| **{tr['ratio_ours_auto_over_peer_best']:.2f}x** (floor 3x: {'met' if tr['meets_floor'] else 'not met'}) |",
        f"| training, images/s, both fp32 | {tr['ours_fp32']['images_per_s']:.1f} | {tr['peer_fp32']['images_per_s']:.1f} "
        f"| {tr['ours_fp32']['images_per_s'] / tr['peer_fp32']['images_per_s']:.2f}x |",
    ]
    if "ours_bf16" in tr:
        lines.append(f"| training, images/s, both bf16 autocast | {tr['ours_bf16']['images_per_s']:.1f} | "
                     f"{tr['peer_bf16']['images_per_s']:.1f} | "
                     f"{tr['ours_bf16']['images_per_s'] / tr['peer_bf16']['images_per_s']:.2f}x |")
    else:
        lines.append("| training in bf16 | not timed: bf16 is emulated on this CPU (precision auto = fp32) | | |")
    ours_gen = (f"{ge['ours']['fp32_s_median']:.2f}" + (f" / {ge['ours']['bf16_s_median']:.2f}" if ge['ours']['bf16_s_median']
                                                         else ""))
    lines += [
        f"| training step FLOPs (forward + backward) | {fl['ours_train_step'] / 1e9:.1f} G | "
        f"{fl['peer_train_step_fp32'] / 1e9:.1f} G | {fl['peer_train_step_fp32'] / fl['ours_train_step']:.2f}x fewer ours |",
        f"| 4 guided images at 32 px, s (ours fp32{' / bf16' if ge['ours']['bf16_s_median'] else ''}: {s['sampler']} "
        f"{s['steps']} steps, guidance {s['guidance']}; peer 1000 steps, cond_scale {ge['peer']['cond_scale']}, {peer_how}) "
        f"| {ours_gen} | {ge['peer']['seconds_used']:.0f} "
        f"| **{ge['ratio_peer_over_ours_auto']:.0f}x** faster at precision auto (floor 100x: "
        f"{'met' if ge['meets_floor'] else 'not met'}) |",
        *[f"| the same 4 images with {a.replace(':', ' ')} steps on the base (another setting, not the default; "
          f"scores: benchmarks/README.md, base-stage solvers) | {v['s_median']:.2f} | {ge['peer']['seconds_used']:.0f} | "
          f"{v['ratio_peer_over']:.0f}x |" for a, v in ge["ours"].get("alternatives_fp32", {}).items()],
        f"| our training FLOP utilisation ({fl['precision']}) | {fl['ours_achieved_flops_per_s'] / 1e9:.0f} GFLOP/s achieved "
        f"/ {fl['matmul_peak_' + fl['precision']]['flops_per_s'] / 1e9:.0f} GFLOP/s {fl['precision']} matmul peak = "
        f"**{100 * fl['utilisation']:.0f}%** (floor 60%) | | |",
    ]
    return "\n".join(lines)


def notes(res: dict) -> str:
    ge, m = res["generation"], res["models"]
    pe = ge["peer"]
    return "\n".join([
        "How it is measured:",
        f"- One command runs both systems; ours in this process, imagen-pytorch in its own venv behind a pipe. They "
        f"take turns (training: {res['setup']['rounds']} rounds x {res['setup']['steps_per_round']} timed steps per "
        "side after warm-up; generation: 3 rounds), never at once, each with `torch.set_num_threads` = the stated "
        "count. One thread is the default because this 2-core machine is shared: 2-thread steps stalled 5-10x "
        "whenever another process took a core (`--threads 2` on a quiet machine).",
        "- Training step, ours: the trainer's own `train.loop.stage_loss` for stage 0 of `shapes-small` (v-prediction, "
        "cosine schedule shifted by -3 in log-SNR, plain MSE, the text-layout loss, caption dropout 0.1) and backward at the trainer's precision (auto: bf16 autocast only where the CPU has native bf16), gradient clipping at 1.0, "
        "AdamW; imagen-pytorch: `Imagen(...)(images, text_embeds=, text_masks=)` (its defaults: eps objective, cosine, "
        "min-SNR 5, cond_drop_prob 0.1), backward, Adam with ImagenTrainer's defaults; its bf16 row is the same under "
        "`torch.autocast` (what `ImagenTrainer(precision=\"bf16\")` does through accelerate). EMA is left out on "
        "both sides. The ratio compares our step at precision auto with the peer's faster precision; where bf16 is "
        "emulated neither side's bf16 is timed (`--bf16` forces it).",
        f"- The peer's U-Net is the closest parameter count on a grid of dim x dim_mults x num_resnet_blocks, with "
        f"attention at the same levels as ours; `max_text_len` is set to the text length (its default of 256 pads "
        f"every prompt to 256 tokens). Both have about the same FLOPs per step, so the throughput ratio is "
        f"implementation efficiency, not model size.",
        f"- Generation: untrained weights, with every all-zero tensor (zero-initialised output layers) filled with "
        f"small noise on both sides so no work is trivial. Ours: `Cascade.generate(stop_at=1)` with the settings of "
        f"{ge['ours']['settings_source']}, one batched pass over [uncond; cond] per step, in fp32 (auto's choice "
        f"where bf16 is emulated) and, where bf16 is native, bf16 autocast. imagen-pytorch: `Imagen.sample(text_embeds=, text_masks=, cond_scale=)` at its default 1000 "
        f"steps; the time is {pe['how']} ({pe['per_step_s']:.3f} s per step + {pe['fixed_s']:.2f} s fixed)"
        + (f"; a measured 1000-step run took {pe['measured_1000_s']:.0f} s." if pe["measured_1000_s"] else "."),
        "- Prompt fidelity of the timed settings (the bundled model's defaults) is the scorer's on the benchmark file, "
        "README \"The bundled model\": colour 100%, shape 83.5%, position 100%, count 72%, relation 100%, word 100% (100 "
        "prompts; at the former 25 base steps: shape 82.4%, count 76%, word 93.3%); on 96 random scenes "
        "`benchmarks/bench_samplers.py` scores 10 base steps beside 25 and DPM-Solver++(3M) at 15: shape 74% / 69% / 70%, "
        "every other attribute equal (README \"Base-stage solvers\"). "
        "The peer's untrained U-Net has no fidelity to score: its row is the time of its default 1000-step sampler.",
        "- FLOP utilisation: FLOPs of our training step (at precision auto) counted by `torch.utils.flop_counter.FlopCounterMode` "
        "(matmuls, convolutions, attention; forward + backward), over the median step time, divided by the best "
        "single square `torch.matmul` of that precision (512-2048) at the same thread count. Step times are medians that include "
        "moments when other processes hold the core, so on a loaded machine the utilisation is understated.",
    ])


def write_readme(path: Path, res: dict) -> None:
    body = (f"{SECTION}\n\n{table(res)}\n\n{notes(res)}\n\nReproduce (about {res['elapsed_s'] / 60:.0f} minutes on 2 "
            f"cores; needs `../shared/peers/imagen_pytorch.sh` once):\n\n```\n{res['command'].strip()}\n```\n\n"
            f"Raw timings, configs and the parameter search: `benchmarks/results/imagen_pytorch.json`. "
            f"`--render` rewrites this section from that file without measuring.\n")
    replace_section(path, SECTION, body)
