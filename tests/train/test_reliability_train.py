"""A training run under faults (issue 18): a full disk (injected, and a real size-limited tmpfs when root)
stops with one message and keeps the previous checkpoint; a NaN loss never reaches the weights; a NaN in
an embedding file is refused by name; --max-steps smoke runs of any preset are valid configs."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from openimagen import faults
from openimagen.io.disk import DiskFullError
from openimagen.train import checkpoint as ckpt
from openimagen.train import train


@pytest.fixture
def fault(monkeypatch):
    """fault("checkpoint.file:7:enospc"): inject one fault into this process (openimagen/faults.py)."""
    def set_fault(spec: str | None):
        faults.reset()
        if spec is None:
            monkeypatch.delenv(faults.ENV, raising=False)
        else:
            monkeypatch.setenv(faults.ENV, spec)
    yield set_fault
    faults.reset()


def _all_finite(folder) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(v).all() for f in folder.rglob("*.safetensors")
               for v in load_file(str(f)).values() if v.is_floating_point())


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_run_resumes(tiny_config, run_dir, fault):
    # the step-4 checkpoint writes 6 tensor files; the 7th file is the first of step 8's: the disk is full there
    fault("checkpoint.file:7:enospc")
    with pytest.raises(DiskFullError) as e:
        train(tiny_config(), run_dir, progress=False)
    msg = str(e.value)
    assert str(run_dir / "checkpoints") in msg and " MB" in msg and "step-0000004 is intact" in msg, msg
    assert "--resume" in msg and "[Errno" not in msg
    root = run_dir / "checkpoints"
    assert ckpt.find_checkpoint(root).name == "step-0000004" and not list(root.glob(".tmp-*"))
    ckpt.load_checkpoint(root / "step-0000004", 2)  # readable
    fault(None)  # space freed
    train(tiny_config(), run_dir, resume=True, progress=False)
    assert ckpt.find_checkpoint(root).name == "step-0000012"


def test_a_full_disk_in_the_embedding_cache_names_the_folder_and_a_rerun_completes(tmp_path, fault):
    from openimagen.data.embeddings import EmbeddingCache, embed_captions

    class Enc:
        dim, max_length = 4, 3

        def encode(self, prompts):
            return torch.ones(len(prompts), 3, 4), torch.ones(len(prompts), 3, dtype=torch.bool)

        def spec(self):
            return {"kind": "fake"}

    fault("embeddings.shard:2:enospc")
    with pytest.raises(DiskFullError, match=r"embeddings.*needs about .* MB.*kept and reused"):
        embed_captions([f"caption {i}" for i in range(10)], Enc(), tmp_path / "embeddings", shard_size=4,
                       progress=False)
    assert not list((tmp_path / "embeddings").glob("*.tmp"))
    fault(None)
    cache = embed_captions([f"caption {i}" for i in range(10)], Enc(), tmp_path / "embeddings", shard_size=4,
                           progress=False)
    assert len(cache) == 11 and cache.lookup(["caption 9"])[0].shape == (1, 3, 4)

    # a NaN in a stored embedding (a damaged or hand-made file) is refused, naming the shard
    from safetensors.torch import load_file, save_file

    shard = sorted((tmp_path / "embeddings").glob("embeds-*.safetensors"))[-1]
    tensors = load_file(str(shard))
    from safetensors import safe_open

    with safe_open(str(shard), "pt") as f:
        meta = f.metadata()
    tensors["embeds"][0, 0] = float("nan")
    save_file(tensors, str(shard), metadata=meta)
    with pytest.raises(ValueError, match=rf"{shard.name}.*NaN or inf"):
        EmbeddingCache(tmp_path / "embeddings").lookup([f"caption {i}" for i in range(10)] + [""])


def test_a_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tiny_config, run_dir, fault):
    fault("train.loss:8:nan")  # step 8 = stage 1's 2nd step (6 steps per stage)
    with pytest.raises(ValueError) as e:
        train(tiny_config(), run_dir, progress=False)
    msg = str(e.value)
    for needle in ("stage 1, step 8", "loss is nan", "no weight saw it", "step-0000004", "optim.lr=",
                   "mixed_precision=no", "optim.grad_clip"):
        assert needle in msg, (needle, msg)
    assert ckpt.find_checkpoint(run_dir / "checkpoints").name == "step-0000004"
    assert _all_finite(run_dir / "checkpoints") and _all_finite(run_dir / "model")


@pytest.mark.parametrize("preset", ["shapes-tiny", "shapes-small"])
@pytest.mark.parametrize("n", [1, 3, 50])
def test_a_smoke_run_of_any_preset_is_a_valid_config(preset, n):
    from openimagen.train import load_train_config, with_max_steps

    cfg = with_max_steps(load_train_config(preset), n)
    for st, full in zip(cfg.stages, load_train_config(preset).stages):
        assert st.steps == min(n, full.steps) and 0 <= st.extras_warmup < st.steps
        assert st.extras_warmup == full.extras_warmup * st.steps // full.steps  # the same share of the run


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_a_small_tmpfs(tiny_config, embedding_cache, tmp_path):
    """The same on a file system that really fills up: a 4 MB tmpfs (checkpoints of the tiny run are ~1.4 MB)."""
    import shutil

    mnt = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(mnt, "4m"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs for this test")
        pytest.skip("needs root (mount -t tmpfs); CI runs it")
    try:
        run = mnt / "run"
        shutil.copytree(embedding_cache, run / "embeddings")
        cfg = tiny_config("keep_checkpoints=3", "checkpoint_every=2")
        with pytest.raises(DiskFullError, match=rf"no space left on the device of {mnt}.*needs about"):
            train(cfg, run, progress=False)
        found = ckpt.find_checkpoint(run / "checkpoints")
        assert found is not None
        for _, p in ckpt.list_checkpoints(run / "checkpoints"):
            ckpt.load_checkpoint(p, 2)  # every checkpoint on the full disk is readable
        assert subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)]).returncode == 0  # space freed
        train(cfg, run, resume=True, progress=False)
        assert ckpt.find_checkpoint(run / "checkpoints").name == "step-0000012"
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
