"""Exact resume: a run SIGKILLed anywhere (mid-step, mid-checkpoint-write, mid-sample-grid) and resumed ends with the
weights of a run never killed, bit for bit; damaged checkpoints are skipped, never loaded."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from openimagen.train import checkpoint as ckpt

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parent)

# One training run in a fresh process: 1 thread so float reductions are reproducible across processes.
SCRIPT = """
import sys, json, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from conftest import TINY_OVERRIDES
from openimagen.train import load_train_config, train
{hook}
cfg = load_train_config("shapes-tiny", None, TINY_OVERRIDES)
train(cfg, sys.argv[1], resume=True, progress=False)
"""
def _start(out: Path, fault: str | None = None) -> subprocess.Popen:
    """A run in a fresh process; `fault` ("checkpoint.file:1") SIGKILLs it at that point (openimagen/faults.py)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("OPENIMAGEN_FAULT", None)
    if fault:
        env["OPENIMAGEN_FAULT"] = f"{fault}:kill"
    return subprocess.Popen([sys.executable, "-c", SCRIPT.format(tests=TESTS, hook=""), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _all_readable(out: Path) -> None:
    from PIL import Image

    for _, p in ckpt.list_checkpoints(out / "checkpoints"):
        ckpt.load_checkpoint(p, 2)  # raises if any file of any checkpoint on disk is damaged
    for png in (out / "samples").glob("step-*.png"):
        with Image.open(png) as im:
            im.load()


def _wait_until(proc: subprocess.Popen, cond, what: str, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read().decode()[-3000:]}")
        if time.time() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _finish_killed(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out.decode()[-3000:]


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]


def _log_steps(out: Path) -> int:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def _final_state(out: Path, step: int = 12) -> dict[str, torch.Tensor]:
    d = out / "checkpoints" / f"step-{step:07d}"
    tensors = {}
    for k in (0, 1):
        for name in ("model", "ema", "optim"):
            for key, v in load_file(str(d / f"stage_{k}" / f"{name}.safetensors")).items():
                tensors[f"{k}/{name}/{key}"] = v
    return tensors


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, embedding_cache):
    import shutil

    runs = {}
    for name in ("a", "b"):
        runs[name] = tmp_path / name
        shutil.copytree(embedding_cache, runs[name] / "embeddings")
    a = _start(runs["a"])  # uninterrupted; runs alongside the first leg of b
    b = runs["b"]

    # kill 1: mid-training, after the step-4 checkpoint and before the next one
    p = _start(b)
    _wait_until(p, lambda: _log_steps(b) >= 6, "step 6")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt.find_checkpoint(b / "checkpoints").name == "step-0000004"
    _all_readable(b)

    # kill 2: inside the write of the step-8 checkpoint (its first file written into the .tmp folder)
    p = _start(b, "checkpoint.file:1")
    _finish_killed(p)
    assert list((b / "checkpoints").glob(".tmp-step-0000008-*/stage_0/model.safetensors"))
    assert ckpt.find_checkpoint(b / "checkpoints").name == "step-0000004"  # the half-written one is ignored
    _all_readable(b)

    # kill 3: inside the write of the final sample grid, after the last checkpoint
    p = _start(b, "samples.grid:1")
    _finish_killed(p)
    assert ckpt.find_checkpoint(b / "checkpoints").name == "step-0000012"
    assert not (b / "samples" / "step-0000012.png").exists()  # written beside, never half in place
    _all_readable(b)

    _finish(_start(b))
    _finish(a)
    sa, sb = _final_state(runs["a"]), _final_state(b)
    assert sa.keys() == sb.keys() and len(sa) > 50
    diff = {k: (sa[k].double() - sb[k].double()).abs().max().item() for k in sa}
    assert max(diff.values()) == 0.0, {k: v for k, v in diff.items() if v}  # bitwise equal

    la = [json.loads(x) for x in (runs["a"] / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lb] == list(range(1, 13))  # replayed steps were not logged twice
    assert [x["loss"] for x in la] == [x["loss"] for x in lb]
    assert not list((b / "checkpoints").glob(".tmp-*"))  # leftovers of the killed writes are swept
    assert sorted(p.name for p in (b / "checkpoints").glob("step-*")) == ["step-0000008", "step-0000012"]
    assert (b / "samples" / "step-0000012.png").is_file()  # the grid the kill interrupted, written on resume
    # the shipped model folder holds the EMA weights of the last checkpoint
    shipped = load_file(str(b / "model" / "stage_1" / "model.safetensors"))
    assert all(torch.equal(v, sb[f"1/ema/{k}"]) for k, v in shipped.items())


# ----------------------------------------------------------------------------------------------
# the checkpoint files themselves, without training


def _tiny_stage_state(seed: int) -> dict:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.9, 0.99))
    net(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    return {"model": net.state_dict(), "ema": net.state_dict(), "optim": opt.state_dict()}


def test_damaged_checkpoints_are_skipped_and_old_ones_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        ckpt.save_checkpoint(root, step, {"step": step}, [_tiny_stage_state(step)], keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [8, 12]
    assert ckpt.find_checkpoint(root).name == "step-0000012"

    # a kill inside a write leaves a .tmp folder; a kill after a bad copy could leave a step folder
    # without state.json, and `latest` may name it or hold garbage
    (root / ".tmp-step-0000016-999" / "stage_0").mkdir(parents=True)
    (root / ".tmp-step-0000016-999" / "stage_0" / "model.safetensors").write_bytes(b"\0" * 10)
    (root / "step-0000020" / "stage_0").mkdir(parents=True)
    (root / "latest").write_text("step-0000020\n")
    assert ckpt.find_checkpoint(root).name == "step-0000012"
    (root / "step-0000020" / "state.json").write_text('{"step": 20')  # cut short
    assert ckpt.find_checkpoint(root).name == "step-0000012"
    (root / "latest").write_bytes(b"\xff\xfe garbage")
    assert ckpt.find_checkpoint(root).name == "step-0000012"
    (root / "latest").unlink()
    assert ckpt.find_checkpoint(root).name == "step-0000012"

    state, stages = ckpt.load_checkpoint(ckpt.find_checkpoint(root), 1)
    assert state == {"step": 12}
    ref = _tiny_stage_state(12)
    assert all(torch.equal(stages[0]["model"][k], v) for k, v in ref["model"].items())

    ckpt.save_checkpoint(root, 16, {"step": 16}, [_tiny_stage_state(16)], keep=2)
    assert not list(root.glob(".tmp-*")) and not list(root.glob(".trash-*"))
    assert (root / "latest").read_text().strip() == "step-0000016"


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    for _ in range(3):
        net(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    ckpt.save_checkpoint(tmp_path, 3, {"step": 3}, [{"model": net.state_dict(), "ema": net.state_dict(),
                                                     "optim": opt.state_dict()}], keep=1)
    _, (loaded,) = ckpt.load_checkpoint(tmp_path / "step-0000003", 1)
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net2.load_state_dict(loaded["model"])
    opt2 = torch.optim.AdamW(net2.parameters(), lr=5.0)
    opt2.load_state_dict(loaded["optim"])
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 1e-2
    x = torch.randn(5, 3)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).square().sum().backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters()))


def test_fused_adamw_on_cpu_and_resume_keeps_the_checkpoints_implementation():
    from types import SimpleNamespace

    from openimagen.train.loop import adamw

    o = SimpleNamespace(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)

    def net_and_step(opt_for):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        opt = opt_for(list(net.parameters()))
        for _ in range(2):
            net(torch.randn(5, 3)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        return net, opt

    fused_net, fused_opt = net_and_step(lambda ps: adamw(ps, o, torch.device("cpu")))
    assert fused_opt.param_groups[0]["fused"] is True
    loop_net, loop_opt = net_and_step(lambda ps: torch.optim.AdamW(ps, lr=o.lr, betas=o.betas, eps=o.eps,
                                                                    weight_decay=o.weight_decay))
    # the same update up to float rounding
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(fused_net.parameters(), loop_net.parameters()))

    # a checkpoint written by the per-tensor loop resumes as the loop, bit for bit, in a fused-by-default optimiser
    resumed_net = copy.deepcopy(loop_net)
    resumed = adamw(list(resumed_net.parameters()), o, torch.device("cpu"))
    resumed.load_state_dict(copy.deepcopy(loop_opt.state_dict()))
    assert not resumed.param_groups[0]["fused"]
    x = torch.randn(5, 3)
    for n, opt in ((loop_net, loop_opt), (resumed_net, resumed)):
        n(x).square().sum().backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(loop_net.parameters(), resumed_net.parameters()))
