"""load_train_config: presets, TOML/YAML files, --set overrides, and one-line errors on bad input."""
from __future__ import annotations

import math

import pytest

from openimagen.config import ConfigError, to_dict
from openimagen.train import TRAIN_PRESETS, TrainConfig, load_train_config, train
from openimagen.train.data import next_stage
from openimagen.train.loop import learning_rate


def test_presets_build_and_round_trip():
    for name, factory in TRAIN_PRESETS.items():
        cfg = load_train_config(name, None, [])
        assert isinstance(cfg, TrainConfig)
        assert cfg == factory()
        assert len(cfg.stages) >= 2 and all(st.stage.lowres for st in cfg.stages[1:])
    tiny = load_train_config("shapes-tiny", None, [])
    assert tiny.resolutions == (16, 32)
    assert load_train_config("shapes-small", None, []).resolutions == (32, 64)
    assert load_train_config("shapes-128", None, []).resolutions == (32, 64, 128)


def test_overrides_are_typed_and_nested():
    cfg = load_train_config("shapes-tiny", None, [
        "optim.lr=3e-4", "stages.1.steps=7", "mixed_precision=bf16", "optim.betas=[0.8, 0.95]",
        "stages.0.stage.unet.dim=32", "sample_prompts=[\"a\", \"b\"]", "stages.0.lr=null", "order=interleaved",
    ])
    assert cfg.optim.lr == 3e-4 and cfg.stages[1].steps == 7 and cfg.mixed_precision == "bf16"
    assert cfg.optim.betas == (0.8, 0.95) and cfg.sample_prompts == ("a", "b")
    assert cfg.stages[0].stage.unet.dim == 32 and cfg.order == "interleaved"
    assert cfg.stages[0].steps == 50  # untouched


def test_toml_and_yaml_files_merge_over_the_preset(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "shapes-tiny"\nseed = 7\n[optim]\nlr = 2e-4\n'
                    '[[stages]]\nsteps = 11\n[[stages]]\nsteps = 12\n')
    cfg = load_train_config(None, toml, ["seed=9"])
    assert (cfg.seed, cfg.optim.lr, cfg.stages[0].steps, cfg.stages[1].steps) == (9, 2e-4, 11, 12)
    assert cfg.stages[0].stage == TRAIN_PRESETS["shapes-tiny"]().stages[0].stage  # merged, not replaced

    yaml = tmp_path / "run.yaml"
    yaml.write_text("data:\n  size: 99\nmixed_precision: bf16\n")
    cfg = load_train_config("shapes-tiny", yaml, [])
    assert cfg.data.size == 99 and cfg.mixed_precision == "bf16"

    # a complete config file needs no preset: the JSON of a config is such a file
    import json

    full = tmp_path / "full.json"
    full.write_text(json.dumps(to_dict(TRAIN_PRESETS["shapes-small"]())))
    assert load_train_config(None, full, []) == TRAIN_PRESETS["shapes-small"]()


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["optim.lrr", "'lr'", "'warmup_steps'"]),
    ("nonsense=1", ["nonsense", "'stages'", "'optim'"]),
    ("stages.4.steps=1", ["stages.4.steps", "0..1"]),
    ("stages.0.stage.unet.widht=8", ["widht", "dim"]),
    ("stages.0.steps=0", ["steps=0", "positive"]),
    ("stages.0.steps=-3", ["steps=-3"]),
    ("mixed_precision=fp8", ["fp8", "bf16"]),
    ("text_encoder.kind=clip", ["clip", "minilm"]),
    ("optim.lr", ["key=value"]),
    ('data.kind_weights={"relations": 1}', ["data.kind_weights", "relations", "single"]),
    ("stages.0.extras_warmup=2", ["extras_warmup", "unet.extras"]),          # the tiny base has no extras
    ("stages.0.extras_loss=-1", ["extras_loss=-1", ">= 0"]),
    ("stages.0.layout_warmup=2", ["stages.0.layout_warmup", "is retired", "stages.0.extras_warmup"]),
    ("stages.1.lowres_aug_max=0.3", ["retired", "stages.1.noise_level_max"]),
    ("stages.1.stage.lowres_aug=0.3", ["retired", "stages.1.stage.noise_level"]),
    ("stages.0.stage.unet.layout_grid=4", ["retired", 'stages.0.stage.unet.extras=[{"kind": "layout"']),
])
def test_bad_overrides_are_one_line_config_errors(override, words):
    with pytest.raises(ConfigError) as e:
        load_train_config("shapes-tiny", None, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown training preset 'nope'.*shapes-small.*shapes-tiny"):
        load_train_config("nope", None, [])
    with pytest.raises(ConfigError, match="preset"):
        load_train_config(None, None, [])
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_train_config("shapes-tiny", tmp_path / "missing.toml", [])
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="does not parse"):
        load_train_config("shapes-tiny", bad, [])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config("shapes-tiny", wrong, [])


def test_stage_order_and_learning_rate():
    cfg = load_train_config("shapes-tiny", None, ["stages.0.steps=3", "stages.1.steps=2"])
    seq, done = [], [0, 0]
    while (k := next_stage(cfg, done)) is not None:
        seq.append(k)
        done[k] += 1
    assert seq == [0, 0, 0, 1, 1]
    cfg = load_train_config("shapes-tiny", None, ["stages.0.steps=3", "stages.1.steps=2", "order=interleaved"])
    seq, done = [], [0, 0]
    while (k := next_stage(cfg, done)) is not None:
        seq.append(k)
        done[k] += 1
    assert seq == [0, 1, 0, 1, 0]
    cfg = load_train_config("shapes-tiny", None, ["optim.warmup_steps=4", "optim.lr=1.0", "optim.decay=cosine",
                                                  "stages.0.steps=14"])
    lrs = [learning_rate(cfg, 0, s) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and abs(lrs[-1] - (0.1 + 0.9 * 0.5 * (1 + __import__("math").cos(0.9 * __import__("math").pi)))) < 1e-12


def test_bad_training_input_fails_before_training(tmp_path, tiny_config):
    folder_cfg = tiny_config("data.kind=folder")
    with pytest.raises(ValueError, match="needs a path"):
        train(folder_cfg, tmp_path / "a", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(folder_cfg, tmp_path / "a", data_path=str(tmp_path / "nowhere"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        train(folder_cfg, tmp_path / "a", data_path=str(tmp_path / "empty"), progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not a png at all")
        (bad / f"{i}.txt").write_text("a caption")
    with pytest.raises(ValueError, match="failed to decode"):
        train(folder_cfg, tmp_path / "a", data_path=str(bad), progress=False)
    with pytest.raises(ValueError, match="max_steps=0"):
        train(tiny_config(), tmp_path / "a", max_steps=0, progress=False)
    assert not (tmp_path / "a").exists()  # nothing was written for any of them


def test_layout_warmup_bounds_crops_and_its_learning_rate():
    layout = ['stages.0.stage.unet.extras=[{"kind": "layout", "grid": 4}]']
    with pytest.raises(ConfigError, match=r"extras_warmup=50 must be an int in \[0, steps=50\)"):
        load_train_config("shapes-tiny", None, layout + ["stages.0.extras_warmup=50"])
    with pytest.raises(ConfigError, match="cannot train on crops"):
        load_train_config("shapes-tiny", None, ['stages.1.stage.unet.extras=[{"kind": "layout", "grid": 4}]',
                                                "stages.1.crop=16"])
    cfg = load_train_config("shapes-tiny", None, layout + [
        "optim.warmup_steps=2", "optim.lr=1.0", "optim.decay=cosine", "stages.0.steps=10", "stages.0.extras_warmup=4"])
    lrs = [learning_rate(cfg, 0, s) for s in range(10)]
    assert lrs[:4] == [0.5, 1.0, 1.0, 1.0]          # the layout warm-up: its own ramp, then constant
    assert lrs[4:6] == [0.5, 1.0]                   # the diffusion steps ramp up afresh
    assert abs(lrs[-1] - (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))) < 1e-12  # cosine over 6 - 2 steps


def test_tagged_entries_are_checked_against_the_class_their_kind_names():
    from openimagen.text import T5EncoderConfig

    cfg = load_train_config("shapes-tiny", None, ["text_encoder.kind=t5", "text_encoder.name_or_path=/models/t5",
                                                  "text_encoder.variant=fp16"])
    assert cfg.text_encoder == T5EncoderConfig("/models/t5", max_length=32, variant="fp16")
    with pytest.raises(ConfigError, match=r"text_encoder has no 'variant'; valid keys are \['max_length', 'kind'\]"):
        load_train_config("shapes-tiny", None, ["text_encoder.variant=fp16"])  # MiniLM has no variant
    with pytest.raises(ConfigError, match=r"unknown kind 'precomputed'; valid kinds are \['minilm', 'spelled', 't5'\]"):
        load_train_config("shapes-tiny", None, ['text_encoder={"kind": "precomputed", "dim": 8}'])
