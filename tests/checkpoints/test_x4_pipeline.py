"""The SD x4 upscaler on our engine against diffusers' StableDiffusionUpscalePipeline on the same folder.

diffusers writes its own tiny upscale-pipeline test components (tiny_x4.py) with save_pretrained; we load
the folder with our loader and sample with our samplers; both get the same prompt, image and seed.
"""
import logging

import pytest
import torch

from openimagen.cascade import Cascade
from openimagen.checkpoints.sd_upscaler import load_upscaler_stage

diffusers = pytest.importorskip("diffusers")
from tiny_x4 import write_x4  # noqa: E402

PROMPT = "A painting of a squirrel eating a burger"
TOL = 1e-3


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    pipe, folder = write_x4(tmp_path_factory.mktemp("x4"))
    stage = load_upscaler_stage(folder)
    return dict(pipe=pipe, folder=folder, stage=stage, ours=Cascade(stage.text_encoder, [stage]))


def _low_res(h=30, w=34, seed=3):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("steps", [2, 10])
def test_matches_upscale_pipeline_on_a_size_not_a_multiple_of_4(x4, steps):
    low = _low_res()
    ref = x4["pipe"](PROMPT, image=low, num_inference_steps=steps, guidance_scale=6.0, noise_level=20,
                     generator=torch.Generator().manual_seed(0), output_type="pt").images   # [0, 1]
    out = x4["ours"].generate(PROMPT, image=low, steps=steps, guidance=6.0, noise_level=20, seed=0, progress=False)
    assert out.images[0].shape == ref.shape == (1, 3, 112, 128)
    err = ((out.images[0] + 1) / 2 - ref).abs().max().item()
    print(f"x4 {steps} steps: max abs error {err:.2e}")
    assert err <= TOL


def test_reads_the_pipeline_settings(x4):
    cfg, stage = x4["stage"].config, x4["stage"]
    assert (cfg.sampler, cfg.steps, cfg.guidance, cfg.noise_level) == ("ddim", 75, 9.0, 20.0)
    assert cfg.parameterization.kind == "v" and cfg.threshold == "clip_x0"  # the test DDIM clips x0
    assert stage.max_noise_level == 350 and stage.vae.cfg.scaling_factor == pytest.approx(0.08333)
    assert stage.schedule.timesteps(2).tolist() == [500.0, 0.0]
    assert stage.text_encoder.tokenizer.pad_token == "!" and stage.text_encoder.tokenizer.pad_token_id == 0


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_our_samplers_run_it_with_fewer_steps(x4, sampler):
    low = _low_res(16, 16)
    a = x4["ours"].generate(PROMPT, image=low, steps=3, sampler=sampler, seed=1, progress=False).images[0]
    b = x4["ours"].generate(PROMPT, image=low, steps=3, sampler=sampler, seed=1, progress=False).images[0]
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all() and torch.equal(a, b)


def test_noise_level_above_the_maximum_is_refused(x4):
    # max_noise_level is 350 (the CLI test refuses 400 on a 1000-label U-Net); this U-Net has only 100 labels
    with pytest.raises(ValueError, match="noise_level 100 is outside 0..99"):
        x4["ours"].generate(PROMPT, image=_low_res(8, 8), steps=1, noise_level=100, progress=False)
    with pytest.raises(ValueError, match="noise_level -1 is outside"):
        x4["ours"].generate(PROMPT, image=_low_res(8, 8), steps=1, noise_level=-1, progress=False)


def test_too_small_an_input_is_refused(x4):
    with pytest.raises(ValueError, match="at least 4x4 pixels, got 3x8"):
        x4["ours"].generate(PROMPT, image=_low_res(3, 8), steps=1, progress=False)


def test_long_prompt_is_cut_with_a_warning_or_refused(x4, caplog):
    long = "a squirrel " * 20  # character-level tokenizer: far over 77 tokens
    with caplog.at_level(logging.WARNING, logger="openimagen"):
        e, _ = x4["stage"].text_encoder.encode([long])
    assert e.shape[1] == 77 and "cut off" in caplog.text
    x4["stage"].text_encoder.long_prompts = "refuse"
    try:
        with pytest.raises(ValueError, match="more than the 77"):
            x4["stage"].text_encoder.encode([long])
    finally:
        x4["stage"].text_encoder.long_prompts = "cut"


def test_half_precision_keeps_the_vae_in_float32(x4):
    stage = load_upscaler_stage(x4["folder"], dtype=torch.bfloat16)
    assert next(stage.unet.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in stage.vae.parameters()} == {torch.float32}  # force_upcast: its decoder overflows in fp16
    low = _low_res(16, 16)
    half = Cascade(stage.text_encoder, [stage]).generate(PROMPT, image=low, steps=2, seed=0, progress=False).images[0]
    full = x4["ours"].generate(PROMPT, image=low, steps=2, seed=0, progress=False).images[0]
    assert half.dtype == torch.float32 and (half - full).abs().mean().item() < 0.02  # bf16 U-Net rounding, x12 by the decode


def test_the_vae_loads_from_either_attention_key_spelling(x4, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(x4["folder"], old)
    f = old / "vae" / "diffusion_pytorch_model.safetensors"
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(f)
    legacy = {}
    for k, v in state.items():
        for new, was in names.items():
            if f"attentions.0.{new}." in k:
                k = k.replace(f"attentions.0.{new}.", f"attentions.0.{was}.")
        legacy[k] = v
    assert sum(".query." in k for k in legacy) == 4  # weight and bias, encoder and decoder
    save_file(legacy, str(f))
    stage = load_upscaler_stage(old)
    for a, b in zip(stage.vae.state_dict().values(), x4["stage"].vae.state_dict().values()):
        assert torch.equal(a, b)
