"""Fine-tuning from a trained model (train --init): frozen stages stay bit for bit, LoRA runs hold only their
adapters and resume exactly, the adapters load back, and bad input says what is wrong in one line."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from openimagen.cascade import Cascade
from openimagen.lora import LoraConfig
from openimagen.stage import Stage
from openimagen.train import checkpoint as ckpt
from openimagen.train import loop, train
from openimagen.train.config import InitConfig
from openimagen.train.finetune import finetune_config

from conftest import TINY_OVERRIDES


class _Spec:
    """The text encoder of a saved model is its spec; the runs read embeddings from the cache."""
    def spec(self):
        return {"kind": "minilm", "max_length": 32}


@pytest.fixture(scope="module")
def init_model(tmp_path_factory, tiny_config):
    """A shapes-tiny cascade with random weights saved as a model folder: the model the runs start from."""
    folder = tmp_path_factory.mktemp("init") / "model"
    torch.manual_seed(1)
    cascade = Cascade(_Spec(), [Stage(st.stage) for st in tiny_config().stages])
    with torch.no_grad():  # a fresh U-Net's zero-initialised output layers would pass no gradient to adapters
        for p in cascade.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cascade.save_pretrained(folder)
    return folder


def _weights(folder, k):
    return load_file(str(folder / f"stage_{k}" / "model.safetensors"))


def _ckpt_tensors(out, step=6):
    d = out / "checkpoints" / f"step-{step:07d}"
    return {f"{k}/{n}/{key}": v for k in (0, 1) for n in ("model", "ema", "optim")
            for key, v in load_file(str(d / f"stage_{k}" / f"{n}.safetensors")).items()}


def _lora_cfg(init_model, **lora):
    init = InitConfig(str(init_model), train=(0,), lora=LoraConfig(rank=2, **lora))
    return finetune_config(init, "shapes-tiny", None, TINY_OVERRIDES)


def test_a_lora_run_killed_and_resumed_ends_bitwise_equal_and_holds_only_adapters(
        init_model, embedding_cache, tmp_path, monkeypatch):
    cfg = _lora_cfg(init_model)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(embedding_cache, d / "embeddings")
    train(cfg, a, progress=False)

    log_window = loop._log_window

    def crash_at_5(cfg, acc, path, window, step, *rest):
        log_window(cfg, acc, path, window, step, *rest)
        if step == 5:
            raise KeyboardInterrupt("killed")  # after the step-4 checkpoint, before the next one
    monkeypatch.setattr(loop, "_log_window", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, b, progress=False)
    assert ckpt.find_checkpoint(b / "checkpoints").name == "step-0000004"
    monkeypatch.setattr(loop, "_log_window", log_window)
    train(cfg, b, resume=True, progress=False)

    sa, sb = _ckpt_tensors(a), _ckpt_tensors(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # bitwise
    # only what trains: adapter matrices of stage 0 (+ their EMA and Adam state); nothing of frozen stage 1
    assert {k for k in sa if k.startswith("0/model/")} and all(".lora_" in k for k in sa if "/model/" in k)
    assert not [k for k in sa if k.startswith("1/")]
    assert not (a / "model").exists() and (a / "adapters" / "stage_0" / "adapter_model.safetensors").is_file()

    # the run folder loads as the starting model with its adapters; the frozen weights are untouched
    from openimagen.load import load_model
    tuned = load_model(str(a))
    base = Cascade.from_pretrained(init_model, text_encoder=_Spec())
    assert all(torch.equal(v, tuned.stages[1].unet.state_dict()[k]) for k, v in _weights(init_model, 1).items())
    sd0 = {k.replace(".base_layer", ""): v for k, v in tuned.stages[0].unet.state_dict().items() if ".lora_" not in k}
    w0 = _weights(init_model, 0)
    assert sd0.keys() == w0.keys() and all(torch.equal(v, sd0[k]) for k, v in w0.items())  # adapters only trained
    emb = torch.randn(1, 4, 384, generator=torch.Generator().manual_seed(0))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([0.5])
    cond = {"text_embeds": emb, "text_mask": torch.ones(1, 4, dtype=torch.bool)}
    with torch.no_grad():
        moved = (tuned.stages[0].call_unet(x, t, cond) - base.stages[0].call_unet(x, t, cond)).abs().max()
    assert moved > 0  # the adapter is on, and it learned something


def test_a_full_fine_tune_of_one_stage_leaves_the_frozen_stage_bitwise_unchanged(init_model, run_dir):
    init = InitConfig(str(init_model), train=(1,))
    cfg = finetune_config(init, "shapes-tiny", None, TINY_OVERRIDES + ["stages.1.steps=3"])
    model = train(cfg, run_dir, progress=False)
    before, after = _weights(init_model, 0), _weights(model, 0)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    changed = _weights(model, 1)
    assert any(not torch.equal(v, changed[k]) for k, v in _weights(init_model, 1).items())
    state = ckpt.load_checkpoint(ckpt.find_checkpoint(run_dir / "checkpoints"), 2)[1]
    assert state[0]["model"] == {} and state[0]["ema"] == {} and len(state[1]["model"]) > 10
    assert [line for line in (run_dir / "log.jsonl").read_text().splitlines() if '"stage": 0' in line] == []


# ----------------------------------------------------------------------------------------------
# bad input


def test_init_of_a_model_whose_stages_do_not_match_the_config_is_one_clear_error(init_model):
    with pytest.raises(ValueError, match=r"--init bundled has 3 stage\(s\) \(efficient 32px, efficient 64px, efficient "
                                         r"128px\) but the config has 2 .*drop --preset/--config"):
        finetune_config(InitConfig("bundled"), "shapes-tiny", None, [])
    with pytest.raises(ValueError, match=r"stage 0 does not match the config \(resolution 16 vs 32\)"):
        finetune_config(InitConfig(str(init_model)), "shapes-small", None, [])
    with pytest.raises(ValueError, match=r"init.train names stage\(s\) \[2\], but the model has 2"):
        finetune_config(InitConfig(str(init_model), train=(2,)), "shapes-tiny", None, TINY_OVERRIDES)


def test_lora_targets_that_match_nothing_and_ranks_above_the_width_are_refused(init_model, run_dir):
    with pytest.raises(ValueError, match=r"LoRA target 'to_x' matches no .* its layers are named \[.*'to_q'"):
        train(_lora_cfg(init_model, targets=("to_q", "to_x")), run_dir, progress=False)
    with pytest.raises(ValueError, match=r"LoRA rank 999 is above the width \d+ of layer"):
        init = InitConfig(str(init_model), train=(0,), lora=LoraConfig(rank=999))
        train(finetune_config(init, "shapes-tiny", None, TINY_OVERRIDES), run_dir, progress=False)


def test_an_adapter_for_another_model_is_refused_by_generate(init_model, tmp_path):
    from openimagen.lora import add_lora, adapter_state, apply_loras, save_adapter, target_paths
    from openimagen.load import load_model

    stage = Cascade.from_pretrained(init_model, text_encoder=_Spec()).stages[0]
    lc = LoraConfig(rank=2)
    paths = add_lora(stage.unet, "efficient", lc)
    assert paths == target_paths(stage.unet, "efficient", lc)  # a layer with an adapter still counts as itself
    save_adapter(tmp_path / "a", adapter_state(stage.unet), lc, paths, stage=0, stage_config=stage.config,
                 base_model=str(init_model))
    bundled = load_model(None)
    with pytest.raises(ValueError, match="was trained on another model"):
        apply_loras(bundled, [str(tmp_path / "a")])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        apply_loras(bundled, [str(tmp_path / "missing") + ":0.5"])


def test_cli_fine_tuning_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    from openimagen.cli import main

    assert main(["train", "--preset", "shapes-tiny", "--lora-rank", "4", "--out", str(tmp_path / "a")]) == 2
    assert "give --init MODEL" in capsys.readouterr().err
    assert main(["train", "--init", "bundled", "--preset", "shapes-tiny", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init bundled has 3 stage(s)" in err and len(err.splitlines()) == 1
    assert main(["train", "--init", "bundled", "--train-stages", "0,x", "--out", str(tmp_path / "c")]) == 2
    assert "--train-stages '0,x'" in capsys.readouterr().err


def test_a_generate_request_carries_its_adapters_through_json():
    from openimagen.api import GenerateRequest

    r = GenerateRequest(prompt=["a teal star"], lora=["/runs/teal/adapters/stage_0:0.7"])
    assert GenerateRequest.from_json(r.to_json()) == r and r.lora == ("/runs/teal/adapters/stage_0:0.7",)
    with pytest.raises(ValueError, match="lora="):
        GenerateRequest(prompt=["x"], lora="just/a/string")


def _stage_with_random_adapter(init_model, tmp_path):
    from openimagen.lora import add_lora, adapter_state, save_adapter

    stage = Cascade.from_pretrained(init_model, text_encoder=_Spec()).stages[0]
    lc = LoraConfig(rank=2, alpha=4.0, convs=True)
    torch.manual_seed(3)
    paths = add_lora(stage.unet, "efficient", lc)
    with torch.no_grad():
        for n, p in stage.unet.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    save_adapter(tmp_path / "ad", adapter_state(stage.unet), lc, paths, stage=0, stage_config=stage.config,
                 base_model=str(init_model))
    return stage, tmp_path / "ad"


def _out(stage):
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 4, 384, generator=g)
    cond = {"text_embeds": emb, "text_mask": torch.ones(2, 4, dtype=torch.bool)}
    with torch.no_grad():
        return stage.call_unet(x, torch.tensor([0.3, 0.7]), cond)


def test_adapters_scale_stack_and_merge_into_the_weights(init_model, tmp_path):
    from openimagen.lora import apply_loras, merge_adapters

    trained, folder = _stage_with_random_adapter(init_model, tmp_path)
    want = _out(trained)
    load = lambda: Cascade.from_pretrained(init_model, text_encoder=_Spec())
    base = _out(load().stages[0])
    assert (want - base).abs().max() > 1e-2  # the adapter matters
    one = load()
    apply_loras(one, [str(folder)])
    assert torch.allclose(_out(one.stages[0]), want, atol=1e-5)
    zero = load()
    apply_loras(zero, [f"{folder}:0"])
    assert torch.equal(_out(zero.stages[0]), base)  # scale 0 is the base model
    halves = load()
    apply_loras(halves, [f"{folder}:0.5", f"{folder}:0.5"])  # two active adapters, half the update each
    assert torch.allclose(_out(halves.stages[0]), want, atol=1e-5)
    merge_adapters(one.stages[0].unet)
    assert not any(".lora_" in n or "base_layer" in n for n in one.stages[0].unet.state_dict())
    assert torch.allclose(_out(one.stages[0]), want, atol=1e-5)  # merged = adapted


def _image_folder(folder, captions, color):
    from PIL import Image

    folder.mkdir(parents=True)
    for i, c in enumerate(captions):
        Image.new("RGB", (16, 16), color).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(c + "\n")
    return folder


def test_prior_and_replay_images_follow_the_subject_with_their_own_captions(init_model, tmp_path):
    from openimagen.data.folders import ImageCaptionFolder
    from openimagen.train.config import PriorConfig
    from openimagen.train.finetune import with_subject

    subject = ImageCaptionFolder(_image_folder(tmp_path / "subject", ["s0", "s1", "s2"], (255, 0, 0)), 16)
    _image_folder(tmp_path / "run" / "prior", ["p0"], (0, 255, 0))  # as ensure_prior_images leaves it
    replay = _image_folder(tmp_path / "old", ["r0", "r1"], (0, 0, 255))
    init = InitConfig(str(init_model), caption="a photo of sks", prior=PriorConfig(prompts=("p",), num_images=1),
                      replay=str(replay))
    cfg = finetune_config(init, "shapes-tiny", None, TINY_OVERRIDES)
    ds = with_subject(cfg, subject, tmp_path / "run")
    assert len(ds) == 6
    assert ds.captions == ["a photo of sks"] * 3 + ["p0", "r0", "r1"]
    items = [ds[i] for i in range(6)]
    assert [it["caption"] for it in items] == ds.captions
    # the images are the folders' own: red subject, green prior, blue replay (channel means in [-1, 1])
    means = [it["image"].mean(dim=(1, 2)) for it in items]
    assert all(m[0] > 0.9 for m in means[:3]) and means[3][1] > 0.9 and all(m[2] > 0.9 for m in means[4:])
    with pytest.raises(IndexError):
        ds[6]

    gone = InitConfig(str(init_model), replay=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="init.replay: .*nope is not a folder"):
        with_subject(finetune_config(gone, "shapes-tiny", None, TINY_OVERRIDES), subject, tmp_path / "run")


def test_cli_replay_of_a_missing_folder_or_without_init_is_one_line(tmp_path, capsys):
    from openimagen.cli import main

    assert main(["train", "--preset", "shapes-tiny", "--replay", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "--replay" in capsys.readouterr().err
    assert main(["train", "--init", "bundled", "--replay", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--replay" in err and "no such folder" in err and len(err.splitlines()) == 1
