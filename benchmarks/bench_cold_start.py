"""Cold start of `openimagen generate` with the bundled model: wall time and where it goes.

Every run is a fresh Python process (nothing cached in memory; the OS file cache is warm after the first run,
as it is for a user's second command). Two measurements per round, for each source tree named:
- `cli`: the real command, `python -m openimagen.cli --threads 1 -q generate PROMPT --out DIR`, timed from outside;
- `phases`: the same library calls the command makes, timed inside one process: import (torch + openimagen's
  CLI and request modules), load (`load.load_model(None)`: both U-Nets and the text encoder), encode (the
  prompt, first call), sample (`Cascade.generate` with those embeddings: both stages at their defaults,
  the "" branch encoded inside), save (`api.write_pngs`).
Trees alternate (ABAB) so that the shared machine's load falls on both; medians are reported.

    PYTHONPATH=src python benchmarks/bench_cold_start.py --before /tmp/before/src --rounds 3
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

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, machine_words, replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle above a blue square"

PHASES = r'''
import time, json, sys
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from openimagen import api, cli
from openimagen.load import load_model
t1 = time.perf_counter()
cascade = load_model(None)
t2 = time.perf_counter()
e, m = cascade.text_encoder.encode([PROMPT])
t3 = time.perf_counter()
out = cascade.generate([PROMPT], text_embeds=(e, m), seed=0, progress=False)
t4 = time.perf_counter()
result = api.GenerateResult(images=out.images, prompts=out.prompts,
                            request=api.resolve(cascade, api.GenerateRequest(prompt=[PROMPT])))
api.write_pngs(result, OUT)
t5 = time.perf_counter()
print("PHASES" + json.dumps({"import": t1 - t0, "load": t2 - t1, "encode": t3 - t2, "sample": t4 - t3,
                             "save": t5 - t4, "total": t5 - t0}))
'''


def run_phases(src: str, out: str) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    code = f"PROMPT = {PROMPT!r}; OUT = {out!r}\n" + PHASES
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    line = next(l for l in p.stdout.splitlines() if l.startswith("PHASES"))
    return {**json.loads(line[6:]), "process": time.perf_counter() - t0}


def run_cli(src: str, out: str) -> float:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "openimagen.cli", "--threads", "1", "-q", "generate", PROMPT,
                    "--out", out], env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="another src/ tree to time alongside (e.g. the base commit's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/cold_start.json"))
    ap.add_argument("--readme", default=str(ROOT / "benchmarks/README.md"), help="'' to leave it alone")
    ap.add_argument("--before-label", default="before (base commit)", help="the --before column's name in the table")
    ap.add_argument("--note", default=NOTE, help="the paragraph under the table: what differs between the trees")
    ap.add_argument("--render", action="store_true", help="rewrite the README section from --json without measuring")
    args = ap.parse_args(argv)
    trees = {"ours": str(ROOT / "src")}
    if args.render:
        result = json.loads(Path(args.json).read_text())
        result.update(before_label=args.before_label, note=args.note)
        Path(args.json).write_text(json.dumps(result, indent=1))
        replace_section(Path(args.readme), "## Cold start of `openimagen generate`", render(result))
        return
    if args.before:
        trees["before"] = args.before
    load_before = os.getloadavg()
    runs = {name: {"cli": [], "phases": []} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, src in trees.items():
                runs[name]["cli"].append(run_cli(src, f"{tmp}/{name}-cli-{r}"))
                runs[name]["phases"].append(run_phases(src, f"{tmp}/{name}-ph-{r}"))
                print(name, r, round(runs[name]["cli"][-1], 2), {k: round(v, 2) for k, v in runs[name]["phases"][-1].items()},
                      flush=True)
    med = {name: {"cli": statistics.median(v["cli"]),
                  **{k: statistics.median(p[k] for p in v["phases"]) for k in v["phases"][0]}} for name, v in runs.items()}
    result = {"measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "machine": {**machine(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
              "prompt": PROMPT, "rounds": args.rounds, "trees": trees, "runs": runs, "median": med,
              "before_label": args.before_label, "note": args.note}
    Path(args.json).write_text(json.dumps(result, indent=1))
    if args.readme:   # --readme '': measure and write the JSON only (e.g. another CPU beside the README's)
        replace_section(Path(args.readme), "## Cold start of `openimagen generate`", render(result))


NOTE = ("What changed: the bundled text encoder runs on our own BERT (`minilm.py`: `tokenizers` + `safetensors`, "
        "bit-identical to transformers' BertModel) instead of importing transformers, and small U-Nets are built on "
        "the CPU instead of the meta device (whose first use imports torch's decompositions). Weights are read with "
        "safetensors (memory-mapped). The text encoder is loaded once per process.")


def render(res: dict) -> str:
    m, med = res["machine"], res["median"]
    cols = ["ours"] + (["before"] if "before" in med else [])
    before = res.get("before_label", "before (base commit)")
    head = "| phase | " + " | ".join({"ours": "now, s", "before": f"{before}, s"}[c] for c in cols) + " |"
    rows = [head, "|---" * (len(cols) + 1) + "|"]
    names = [("cli", "**`openimagen generate`, wall (fresh process)**"), ("import", "import (torch + openimagen)"),
             ("load", "load (the U-Nets + text encoder)"), ("encode", "encode the prompt"),
             ("sample", "sample (every stage at its defaults)"), ("save", "save PNGs"), ("total", "sum of phases")]
    for key, label in names:
        rows.append(f"| {label} | " + " | ".join(f"{med[c][key]:.2f}" for c in cols) + " |")
    return (f"## Cold start of `openimagen generate`\n\nMeasured {res['measured']} on {machine_words(m)}, 1 torch "
            f"thread, {res['rounds']} rounds, trees alternating, medians; load average {m['load_avg_before'][0]:.1f} "
            f"before, {m['load_avg_after'][0]:.1f} after (the machine may be shared with other jobs, so expect "
            "noise; compare the columns, which ran side by side).\n\n" + "\n".join(rows) +
            "\n\n" + res.get("note", NOTE) + "\n\n```\ngit archive <base> src | tar -x -C /tmp/before\n"
            "PYTHONPATH=src python benchmarks/bench_cold_start.py --before /tmp/before/src --rounds 3\n```\n"
            "Raw runs: `benchmarks/results/cold_start.json`.\n")


if __name__ == "__main__":
    main()
