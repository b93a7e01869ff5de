"""Load on `openimagen serve`: 50 concurrent clients submit 200 jobs against a queue of 16.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_serve_load.py [--clients 50 --jobs 200 --queue 16]

The server is the real command (`python -m openimagen.cli serve --port 0`, the bundled model, 1 torch
thread) in its own process, so its resident memory is its own. Each client takes the next job number,
submits it, and follows it to the end (its SSE stream); a 429 counts the job as rejected and the
client waits the Retry-After it was told before taking the next number. Checked afterwards:

- every accepted job completed, its images are on disk and in the gallery index exactly once
  (none lost, none run twice); every rejected one got 429 (and nothing else);
- the server's resident memory after the run minus after a warm-up job (< 100 MB);
- queue wait (started - created) and run time (finished - started), p50 / p95, from the job records.

Writes benchmarks/results/serve_load.json and the "Serving under load" section of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SECTION = "## Serving under load"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="sampling steps per stage of each job")
    ap.add_argument("--render", action="store_true", help="rewrite the README section from the JSON only")
    args = ap.parse_args()
    out_json = ROOT / "benchmarks" / "results" / "serve_load.json"
    if args.render:
        return render(json.loads(out_json.read_text()))
    from machine import machine

    gallery = Path(tempfile.mkdtemp(prefix="serve-load-"))
    proc = subprocess.Popen([sys.executable, "-m", "openimagen.cli", "--threads", "1", "serve", "--port", "0",
                             "--out", str(gallery), "--max-queue", str(args.queue)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        url = proc.stdout.readline().split()[2].rstrip("/")
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain its log
        body = {"prompt": "a red circle above a blue square", "steps": args.steps, "seed": 0}
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(300):
                try:
                    c.get("/api/v1/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            warm = c.post("/api/v1/jobs", json=body).json()
            while c.get(f"/api/v1/jobs/{warm['id']}").json()["status"] != "completed":
                time.sleep(0.1)
            rss_before = rss_mb(proc.pid)
        result = run_clients(url, body, args)
        rss_after = rss_mb(proc.pid)
        with httpx.Client(base_url=url, timeout=60) as c:
            gallery_index = c.get("/api/v1/gallery", params={"limit": 500}).json()["images"]
    finally:
        proc.terminate()
        proc.wait(30)
    accepted = result["accepted"]
    per_job = Counter(r["job"] for r in gallery_index)
    on_disk = all((gallery / "jobs" / j).is_dir() and any((gallery / "jobs" / j).rglob("*.png")) for j in accepted)
    waits = [r["started"] - r["created"] for r in accepted.values()]
    runs = [r["finished"] - r["started"] for r in accepted.values()]
    report = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(),
        "settings": vars(args) | {"model": "bundled (32 -> 64 px)", "torch_threads": 1},
        "submitted": result["submitted"], "accepted": len(accepted), "rejected_429": result["rejected"],
        "other_answers": result["other"], "completed": sum(r["status"] == "completed" for r in accepted.values()),
        "not_completed": {j: r["status"] for j, r in accepted.items() if r["status"] != "completed"},
        "all_on_disk": on_disk, "gallery_records_per_job": sorted(set(per_job[j] for j in accepted)),
        "jobs_in_gallery_not_accepted": sorted(set(per_job) - set(accepted) - {warm["id"]}),
        "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_after, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "queue_wait_s": {"p50": round(pct(waits, .5), 3), "p95": round(pct(waits, .95), 3)},
        "run_s": {"p50": round(pct(runs, .5), 3), "p95": round(pct(runs, .95), 3)},
        "wall_s": round(result["wall_s"], 1),
    }
    report["ok"] = (report["completed"] == len(accepted) and on_disk and report["gallery_records_per_job"] == [1]
                    and not report["jobs_in_gallery_not_accepted"] and not report["other_answers"]
                    and report["accepted"] + report["rejected_429"] == args.jobs and report["rss_growth_mb"] < 100)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    render(report)


def follow(c: httpx.Client, events_url: str) -> dict:
    """The job's final record, from its SSE stream (the event with the end state carries the record)."""
    kind = None
    with c.stream("GET", events_url) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("completed", "failed", "cancelled"):
                return json.loads(line[6:])
    raise RuntimeError(f"{events_url} ended without a final event")


def run_clients(url: str, body: dict, args) -> dict:
    lock = threading.Lock()
    state = {"next": 0, "accepted": {}, "rejected": 0, "other": [], "submitted": 0}

    def client():
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    if state["next"] >= args.jobs:
                        return
                    n = state["next"]
                    state["next"] += 1
                r = c.post("/api/v1/jobs", json={**body, "seed": n})
                with lock:
                    state["submitted"] += 1
                if r.status_code == 429:
                    with lock:
                        state["rejected"] += 1
                    time.sleep(float(r.headers["retry-after"]))
                    continue
                if r.status_code != 202:
                    with lock:
                        state["other"].append(r.status_code)
                    continue
                job_id = r.json()["id"]
                rec = follow(c, r.json()["events_url"])
                with lock:
                    if job_id in state["accepted"]:
                        state["other"].append(f"duplicate id {job_id}")
                    state["accepted"][job_id] = rec

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return state | {"wall_s": time.perf_counter() - t0}


def render(r: dict) -> None:
    from machine import replace_section

    s = r["settings"]
    body = f"""{SECTION}

Measured {r['measured']} on {r['machine']['cpu']} ({r['machine']['logical_cpus']} logical CPUs, shared with other work),
`openimagen serve` with the {s['model']} model, {s['steps']} steps per stage, {s['torch_threads']} torch thread, queue {s['queue']}:
{s['clients']} concurrent clients submitted {s['jobs']} jobs (each client follows its job's SSE stream to the end; after a 429 it waits the
Retry-After it was given, then submits its next job).

| measurement | result |
|---|---|
| accepted (202) / rejected (429) / other answers | {r['accepted']} / {r['rejected_429']} / {len(r['other_answers'])} |
| accepted jobs completed, images on disk, in the gallery index exactly once | {r['completed']} of {r['accepted']}, {'yes' if r['all_on_disk'] else 'NO'}, {'yes' if r['gallery_records_per_job'] == [1] else 'NO ' + str(r['gallery_records_per_job'])} |
| jobs lost (accepted, not completed) / run twice (more than one gallery record) / in the gallery unasked | {len(r['not_completed'])} / {0 if r['gallery_records_per_job'] == [1] else 'SOME: ' + str(r['gallery_records_per_job'])} / {len(r['jobs_in_gallery_not_accepted'])} |
| server resident memory after a warm-up job -> after the run | {r['rss_mb_before']} MB -> {r['rss_mb_after']} MB (**{r['rss_growth_mb']:+} MB**, bound 100 MB) |
| queue wait p50 / p95 | {r['queue_wait_s']['p50']} s / {r['queue_wait_s']['p95']} s |
| run time p50 / p95 | {r['run_s']['p50']} s / {r['run_s']['p95']} s |
| wall time | {r['wall_s']} s |

Reproduce: `PYTHONPATH=src .venv/bin/python benchmarks/bench_serve_load.py` (raw: `benchmarks/results/serve_load.json`;
`--render` rewrites this section from it).
"""
    replace_section(ROOT / "benchmarks" / "README.md", SECTION, body)


if __name__ == "__main__":
    main()
