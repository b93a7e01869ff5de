"""Training a whole cascade in one call: a loadable model folder that generates, a loss that falls."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from openimagen.cascade import Cascade
from openimagen.train import train


def test_one_call_trains_every_stage_into_a_loadable_model(run_dir, tiny_config, minilm):
    cfg = tiny_config("order=interleaved")
    model_dir = train(cfg, run_dir, progress=False)
    assert model_dir == run_dir / "model"

    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in log] == [0, 1] * 6  # interleaved: both stages trained in this call
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in log)
    assert (run_dir / "samples" / "step-0000012.png").is_file()
    assert json.loads((run_dir / "train_config.json").read_text())["order"] == "interleaved"

    # the model folder holds the EMA weights, and records the real text encoder
    index = json.loads((model_dir / "cascade.json").read_text())
    assert index["text_encoder"] == {"kind": "minilm", "max_length": 32}
    assert index["prompt_expansion"] == "shapes"  # trained on the shapes world: terse prompts get expanded
    ema = load_file(str(run_dir / "checkpoints" / "step-0000012" / "stage_0" / "ema.safetensors"))
    raw = load_file(str(run_dir / "checkpoints" / "step-0000012" / "stage_0" / "model.safetensors"))
    shipped = load_file(str(model_dir / "stage_0" / "model.safetensors"))
    assert all(torch.equal(shipped[k], ema[k]) for k in ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)

    cascade = Cascade.from_pretrained(model_dir, text_encoder=minilm)
    out = cascade.generate(["a blue square on a beige background"], steps=3, seed=1, progress=False)
    assert [tuple(x.shape) for x in out.images] == [(1, 3, 16, 16), (1, 3, 32, 32)]
    assert all(torch.isfinite(x).all() for x in out.images)

    # resuming a finished run trains nothing and keeps the weights
    before = load_file(str(model_dir / "stage_1" / "model.safetensors"))
    assert train(cfg, run_dir, resume=True, progress=False) == model_dir
    after = load_file(str(model_dir / "stage_1" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 12

    with pytest.raises(ValueError, match="resume=True"):
        train(cfg, run_dir, progress=False)  # never silently overwrite a run


def test_loss_decreases_on_shapes_tiny(run_dir, tiny_config):
    steps = 40
    cfg = tiny_config(f"stages.0.steps={steps}", "stages.1.steps=1", "stages.0.batch_size=8",
                      "checkpoint_every=1000", "caption_dropout=0.0")
    train(cfg, run_dir, progress=False)
    losses = [json.loads(x)["loss"] for x in (run_dir / "log.jsonl").read_text().splitlines()][:steps]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def test_layout_warmup_trains_only_the_text_layout(run_dir, tiny_config):
    # The warm-up steps fit the layout's image guess alone: the U-Net proper keeps its initial weights,
    # the layout (and the text projection it reads) moves; the diffusion steps after it train everything.
    cfg = tiny_config('stages.0.stage.unet.extras=[{"kind": "layout", "grid": 4}]', "stages.0.extras_warmup=4",
                      "stages.0.steps=6", "stages.1.steps=1", "checkpoint_every=4", "keep_checkpoints=3")
    train(cfg, run_dir, progress=False)
    ckpt = run_dir / "checkpoints"
    after_warmup = load_file(str(ckpt / "step-0000004" / "stage_0" / "model.safetensors"))
    after_all = load_file(str(ckpt / "step-0000007" / "stage_0" / "model.safetensors"))
    torch.manual_seed(cfg.seed)
    from openimagen.nn import EfficientUNet

    initial = EfficientUNet(cfg.stages[0].stage.unet).state_dict()
    text_path = ("layout", "text_proj", "text_norm", "null_text")
    moved = {k for k in initial if not torch.equal(initial[k], after_warmup[k])}
    assert moved and all(k.startswith(text_path) for k in moved), sorted(moved)
    assert any(k.startswith("layout.") for k in moved)
    unet_proper = [k for k in initial if not k.startswith(text_path)]
    assert any(not torch.equal(after_warmup[k], after_all[k]) for k in unet_proper)
    losses = [json.loads(x)["loss"] for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x) for x in losses)


def _shapes_items(n: int, resolution: int = 40):
    from openimagen.data.shapes import ShapesWorld, render

    world = ShapesWorld(resolution=resolution, size=n, seed=3)
    return [{"image": render(world.scene_and_caption(i)[0], resolution), "caption": world.scene_and_caption(i)[1],
             "key": f"{i:04d}"} for i in range(n)]


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_folder_and_shard_data_train_and_resume(tmp_path, tiny_config, minilm, kind):
    from openimagen.data.embeddings import embed_captions
    from openimagen.data.webdataset import write_shards

    items = _shapes_items(10)
    data = tmp_path / "data"
    if kind == "folder":
        data.mkdir()
        for it in items:
            it["image"].save(data / f"{it['key']}.png")
            (data / f"{it['key']}.txt").write_text(it["caption"])
    else:
        write_shards(items, data, samples_per_shard=4)
    out = tmp_path / "run"
    embed_captions([it["caption"] for it in items] + ["a red circle on a gray background"], minilm,
                   out / "embeddings", progress=False)
    # the data path alone picks the loader when the config is a shapes-world one (the CLI's --data)
    cfg = tiny_config("stages.0.steps=3", "stages.1.steps=3", "checkpoint_every=2")
    train(cfg, out, data_path=str(data), max_steps=2, progress=False)  # stops after 2 steps per stage
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    train(cfg, out, data_path=str(data), resume=True, progress=False)  # the third step of each stage
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 7))
    # max_steps capped each stage at 2; the resumed run (no cap) adds the third step of each
    assert [(x["stage"], x["stage_step"]) for x in log] == [(0, 1), (0, 2), (1, 1), (1, 2), (0, 3), (1, 3)]
    assert json.loads((out / "train_config.json").read_text())["data"]["kind"] == kind
    assert Cascade.from_pretrained(out / "model", text_encoder=minilm).stages[1].resolution == 32


def test_resume_with_another_architecture_is_a_clear_error(run_dir, tiny_config):
    train(tiny_config(), run_dir, max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"does not fit stage 0 .*train_config.json"):
        train(tiny_config("stages.0.stage.unet.dim=32"), run_dir, resume=True, progress=False)
