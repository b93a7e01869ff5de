"""Two CPU processes under torchrun form one data-parallel run (not two runs racing on one folder)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parent)

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from conftest import TINY_OVERRIDES
from openimagen.train import load_train_config, train
train(load_train_config("shapes-tiny", None, TINY_OVERRIDES), sys.argv[1], progress=False)
"""


def test_torchrun_on_cpu_joins_one_process_group(tmp_path, embedding_cache):
    out = tmp_path / "run"
    shutil.copytree(embedding_cache, out / "embeddings")
    script = tmp_path / "run_tiny.py"
    script.write_text(SCRIPT.format(tests=TESTS))
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    state = json.loads((out / "checkpoints" / "step-0000012" / "state.json").read_text())
    # save() gathers every rank's data position: one entry per process of the group
    assert len(state["data_positions"]) == 2, state["data_positions"]
    # both walk one global order: 12 steps x global batch 4 = 48 samples = epoch 1, index 16 of 32
    assert state["data_positions"] == [[1, 16], [1, 16]]
    # only the main process logs: every step appears once
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    assert (out / "model" / "cascade.json").is_file()
