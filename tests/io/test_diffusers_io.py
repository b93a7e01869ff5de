"""io/diffusers.py on hand-written diffusers folders: any module loads, every file layout, every clear error.

The model here is a plain two-layer module, not an IF U-Net: the reader must not care what it fills.
"""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from openimagen.io.diffusers import load_component, load_strict, read_noise_schedule, read_sampling_scheduler, read_weights
from openimagen.io.errors import CheckpointError

CONFIG = {"_class_name": "Tiny", "width": 4}
NAME = "diffusion_pytorch_model"
run_code = []  # appended to by Evil's pickle payload if it ever runs


def _payload():
    run_code.append("ran")


class Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(3, width)
        self.conv = nn.Conv2d(width, 2, 1)


def build(config: dict) -> nn.Module:
    if config.get("_class_name") != "Tiny":
        raise ValueError(f"not a Tiny config: {config.get('_class_name')!r}")
    return Tiny(config["width"])


def weights(seed=0) -> dict:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in Tiny(4).state_dict().items()}


def component(root, state=None, config=CONFIG, file=f"{NAME}.safetensors"):
    """root/unet/{config.json, file}; returns root."""
    d = root / "unet"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    if state is not None:
        save_file(state, str(d / file))
    return root


def assert_same(model, state):
    got = model.state_dict()
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def test_single_file_from_the_pipeline_folder_or_the_component_itself(tmp_path):
    want = weights()
    component(tmp_path, want)
    for where in (tmp_path, tmp_path / "unet"):
        model = load_component(where, "unet", build)
        assert_same(model, want)
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


def test_sharded_weights_with_their_index(tmp_path):
    want = weights()
    d = component(tmp_path) / "unet"
    keys = sorted(want)
    shards = {f"{NAME}-00001-of-00002.safetensors": keys[:2], f"{NAME}-00002-of-00002.safetensors": keys[2:]}
    for name, ks in shards.items():
        save_file({k: want[k] for k in ks}, str(d / name))
    index = d / f"{NAME}.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    assert_same(load_component(tmp_path, "unet", build), want)

    (d / f"{NAME}-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard diffusion_pytorch_model-00002-of-00002.safetensors named by "
                                              "the index is missing"):
        load_component(tmp_path, "unet", build)
    index.write_text(json.dumps({"weight_map": {"proj.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="names shards outside its folder"):
        load_component(tmp_path, "unet", build)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a valid shard index"):
        load_component(tmp_path, "unet", build)


def test_fp16_variant_is_preferred_when_asked_and_is_a_fallback_otherwise(tmp_path):
    full, half = weights(0), {k: v.half() for k, v in weights(1).items()}
    d = component(tmp_path, full) / "unet"
    save_file(half, str(d / f"{NAME}.fp16.safetensors"))
    assert_same(load_component(tmp_path, "unet", build), full)
    model = load_component(tmp_path, "unet", build, dtype=torch.float16, variant="fp16")
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert_same(model, half)
    (d / f"{NAME}.safetensors").unlink()  # a repo that ships fp16 only
    assert_same(load_component(tmp_path, "unet", build), half)


def test_bin_is_read_with_weights_only(tmp_path):
    want = weights()
    d = component(tmp_path) / "unet"
    torch.save(want, d / f"{NAME}.bin")
    assert_same(load_component(tmp_path, "unet", build), want)

    class Evil:  # a pickle that would run code when unpickled without weights_only
        def __reduce__(self):
            return _payload, ()

    torch.save({"proj.weight": Evil()}, d / f"{NAME}.bin")
    with pytest.raises(CheckpointError, match="not a readable tensor file"):
        load_component(tmp_path, "unet", build)
    assert run_code == []
    torch.save([1, 2], d / f"{NAME}.bin")
    with pytest.raises(CheckpointError, match="holds a list, not a dict of tensors"):
        load_component(tmp_path, "unet", build)


@pytest.mark.parametrize("change,match", [
    (lambda s: s.pop("conv.bias"), r"missing 1 \[conv.bias\]; unexpected 0 \[\]; wrong shape 0"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), r"missing 0 \[\]; unexpected 1 \[extra.weight\]"),
    (lambda s: s.update({"proj.weight": torch.zeros(5, 3)}),
     r"missing 0 \[\]; unexpected 0 \[\]; wrong shape 1 \[proj.weight: file \(5, 3\) vs config \(4, 3\)\]"),
], ids=["missing", "unexpected", "wrong shape"])
def test_key_and_shape_mismatches_name_the_key(tmp_path, change, match):
    state = weights()
    change(state)
    component(tmp_path, state)
    with pytest.raises(CheckpointError, match="do not match its config.json: " + match):
        load_component(tmp_path, "unet", build)
    with torch.device("meta"):
        model = Tiny(4)
    with pytest.raises(CheckpointError, match=match):
        load_strict(model, state, "here")


def test_corrupt_files_and_folders_give_clear_errors(tmp_path):
    want = weights()
    f = component(tmp_path, want) / "unet" / f"{NAME}.safetensors"
    good = f.read_bytes()
    for bad in (b"\xff" * 64 + good[64:], good[: len(good) // 2]):  # garbage header; truncated download
        f.write_bytes(bad)
        with pytest.raises(CheckpointError, match=f"{f.name} is not a readable safetensors file.*re-download"):
            read_weights(f.parent)
    f.unlink()
    (f.parent / f"{NAME}.bin").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable tensor file"):
        read_weights(f.parent)
    (f.parent / f"{NAME}.bin").unlink()
    with pytest.raises(CheckpointError, match=r"no diffusion_pytorch_model\*.safetensors in"):
        read_weights(f.parent)
    (f.parent / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON.*re-download it"):
        load_component(tmp_path, "unet", build)
    with pytest.raises(CheckpointError, match="does not exist; expected a diffusers folder: vae/config.json"):
        load_component(tmp_path / "nowhere", "vae", build)


def test_the_config_is_refused_before_any_weight_is_read(tmp_path):
    d = component(tmp_path, config={"_class_name": "Other"}) / "unet"
    (d / f"{NAME}.safetensors").write_bytes(b"")  # would fail to read
    with pytest.raises(ValueError, match="not a Tiny config: 'Other'"):
        load_component(tmp_path, "unet", build)


# ----------------------------------------------------------------------------- scheduler configs

IF_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                "thresholding": True, "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5,
                "prediction_type": "epsilon", "variance_type": "learned_range", "timestep_spacing": "leading"}


def test_scheduler_config_translation(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(IF_SCHEDULER))
    f = read_sampling_scheduler(path, learned_variance=True)
    assert (f["schedule"].kind, f["schedule"].num_train_timesteps) == ("ddpm_cosine", 1000)
    assert f["parameterization"].kind == "eps" and f["parameterization"].learned_variance
    assert (f["threshold"], f["threshold_percentile"], f["threshold_max"]) == ("dynamic", 0.95, 1.5)
    path.write_text(json.dumps(dict(IF_SCHEDULER, thresholding=False, clip_sample=False)))
    assert read_sampling_scheduler(path, learned_variance=True)["threshold"] == "none"
    assert read_noise_schedule(path).kind == "ddpm_cosine"
    path.write_text(json.dumps(dict(IF_SCHEDULER, beta_schedule="scaled_linear")))  # any named table reads (issue 13)
    assert read_noise_schedule(path).betas == "scaled_linear"
    for key, value, match in [("beta_schedule", "sigmoid", "beta_schedule='sigmoid' is not supported"),
                              ("timestep_spacing", "trailing", "timestep_spacing='trailing' is not supported"),
                              ("prediction_type", "v_prediction", "prediction_type='v_prediction' is not supported"),
                              ("variance_type", "fixed_small", "variance_type='fixed_small' .* is not supported")]:
        path.write_text(json.dumps(dict(IF_SCHEDULER, **{key: value})))
        with pytest.raises(CheckpointError, match=match):
            read_sampling_scheduler(path, learned_variance=True)
