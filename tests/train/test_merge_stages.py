"""One cascade trained as two runs (`train --train-stages 0` and `--train-stages 1`) and joined by
`merge-stages`: the base share is bit for bit the base of a one-run training, the merged folder holds each
stage of the run that trained it, and every way the runs can fail to fit is refused in one line."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from openimagen.cascade import Cascade
from openimagen.config import ConfigError
from openimagen.train import train
from openimagen.train.merge import MergeError, merge_stages


def _weights(model, k):
    return load_file(str(model / f"stage_{k}" / "model.safetensors"))


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.fixture(scope="module")
def shares(tmp_path_factory, tiny_config, embedding_cache):
    """(full run, base share, SR share), all from the tiny config; the shares trained as separate runs."""
    root = tmp_path_factory.mktemp("split")
    cfg = tiny_config()
    runs = {}
    for name, stages in (("full", None), ("base", (0,)), ("sr", (1,))):
        out = root / name
        shutil.copytree(embedding_cache, out / "embeddings")
        train(dataclasses.replace(cfg, train_stages=stages), out, progress=False)
        runs[name] = out
    return runs


def test_base_share_is_the_base_of_a_one_run_training(shares):
    assert _equal(_weights(shares["base"] / "model", 0), _weights(shares["full"] / "model", 0))


def test_sr_share_checkpoints_only_its_stage_and_draws_no_grid(shares):
    ckpt_dir = sorted((shares["sr"] / "checkpoints").glob("step-*"))[-1]
    assert load_file(str(ckpt_dir / "stage_0" / "model.safetensors")) == {}  # the base is another run's
    assert load_file(str(ckpt_dir / "stage_1" / "model.safetensors"))
    assert not list(shares["sr"].glob("samples/*.png"))  # its base would draw noise
    assert list(shares["base"].glob("samples/*.png"))      # the base share draws its base column


def test_merged_model_holds_each_stage_of_the_run_that_trained_it(shares, tmp_path):
    out = merge_stages([shares["base"], shares["sr"]], tmp_path / "model")
    assert _equal(_weights(out, 0), _weights(shares["base"] / "model", 0))
    assert _equal(_weights(out, 1), _weights(shares["sr"] / "model", 1))
    assert not _equal(_weights(out, 1), _weights(shares["base"] / "model", 1))  # not the base run's untrained SR
    assert json.loads((out / "cascade.json").read_text()) == json.loads((shares["base"] / "model" / "cascade.json").read_text())
    cascade = Cascade.from_pretrained(out)
    assert [s.config.resolution for s in cascade.stages] == [16, 32]
    # the order of the runs on the command line does not matter
    again = merge_stages([shares["sr"], shares["base"]], tmp_path / "again")
    assert all(_equal(_weights(out, k), _weights(again, k)) for k in (0, 1))


def test_merge_refuses_runs_that_do_not_fit(shares, tmp_path):
    with pytest.raises(MergeError, match=r"stage 0 was trained by both"):
        merge_stages([shares["base"], shares["full"]], tmp_path / "m1")
    with pytest.raises(MergeError, match=r"stage 0 was trained by both"):
        merge_stages([shares["base"], _copy_as(shares["base"], tmp_path / "base2", (0,))], tmp_path / "m2")
    with pytest.raises(MergeError, match=r"at least two run folders"):
        merge_stages([shares["base"]], tmp_path / "m3")
    with pytest.raises(MergeError, match=r"is not a training run \(no train_config.json\)"):
        merge_stages([shares["base"], tmp_path], tmp_path / "m4")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(MergeError, match=r"exists and is not empty"):
        merge_stages([shares["base"], shares["sr"]], tmp_path / "full")


def _copy_as(run, dest, stages):
    """A copy of a run folder whose config claims other stages (what a mixed-up folder looks like)."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("embeddings"))
    cfg = json.loads((dest / "train_config.json").read_text())
    cfg["train_stages"] = list(stages)
    (dest / "train_config.json").write_text(json.dumps(cfg))
    return dest


def test_merge_refuses_a_share_of_another_cascade_and_an_unfinished_one(shares, tmp_path):
    other = _copy_as(shares["sr"], tmp_path / "other", (1,))
    cfg = json.loads((other / "train_config.json").read_text())
    cfg["optim"]["lr"] = 0.125
    (other / "train_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match=r"not a share of the same cascade .* differ at optim.lr: .* vs 0.125"):
        merge_stages([shares["base"], other], tmp_path / "m1")

    unfinished = _copy_as(shares["sr"], tmp_path / "unfinished", (1,))
    cfg = json.loads((unfinished / "train_config.json").read_text())
    cfg["stages"][1]["steps"] = 99  # the config asks for more steps than its newest checkpoint has done
    (unfinished / "train_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match=r"has trained stage 1 for 6 of its 99 steps; finish it first: .*--resume"):
        merge_stages([shares["base"], unfinished], tmp_path / "m2")


def test_train_stages_is_checked_in_the_config(tiny_config):
    cfg = tiny_config()
    for bad in ((2,), (), (0, 0), (-1,), (True,)):
        with pytest.raises(ConfigError, match=r"train_stages=.* must list distinct stage indices in 0\.\.1"):
            dataclasses.replace(cfg, train_stages=bad)
    assert [dataclasses.replace(cfg, train_stages=(1,)).trains(k) for k in (0, 1)] == [False, True]


def test_a_share_resumes_only_as_that_share(shares, tiny_config):
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"trains stage\(s\) \[1\]; resume it with --train-stages 1"):
        train(cfg, shares["sr"], resume=True, progress=False)
    with pytest.raises(ValueError, match=r"trains every stage; resume it with no --train-stages"):
        train(dataclasses.replace(cfg, train_stages=(0,)), shares["full"], resume=True, progress=False)
    # the same share resumes (a finished run: nothing left to train, the model folder stays as it was)
    before = _weights(shares["sr"] / "model", 1)
    train(dataclasses.replace(cfg, train_stages=(1,)), shares["sr"], resume=True, progress=False)
    assert _equal(before, _weights(shares["sr"] / "model", 1))
