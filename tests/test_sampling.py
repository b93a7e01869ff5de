"""One stage, run by `sample_stage`: the seams (start state, wrappers, after-step hook, callback, cancel)
and the promise that training and sampling hand a stage's U-Net identical inputs."""
import dataclasses
import types

import pytest
import torch

import openimagen.stage as stage_module
from openimagen.diffusion import Denoised
from openimagen.cascade import Cascade
from openimagen.sampling import GenerationCancelled, noised_image, sample_stage

DIM, L = 16, 5


@pytest.fixture(scope="module")
def tiny():
    cascade = Cascade.build(types.SimpleNamespace(dim=DIM), [("tiny", 8), ("tiny", 16)], steps=4, sampler="ddim")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output layers would make every output trivially equal
        for p in cascade.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return cascade


def _text(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"text_embeds": torch.randn(B, L, DIM, generator=g), "text_mask": torch.ones(B, L, dtype=torch.bool)}


def _run(stage, **kw):
    ts = stage.schedule.timesteps(4)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return sample_stage(stage, _text(2), _text(2, seed=1), (2, 3, 8, 8), ts, guidance=3.0, **kw)


def test_a_callers_wrapper_is_applied_at_every_step(tiny):
    stage, seen = tiny.stages[0], []

    def wrap(denoise):
        def wrapped(x, t):
            d = denoise(x, t)
            seen.append(t[0].item())
            return Denoised(x0=torch.zeros_like(d.x0), eps=d.eps)  # a wrapper that changes the result
        return wrapped

    out = _run(stage, wrappers=[wrap])
    assert seen == stage.schedule.timesteps(4).tolist()
    assert torch.equal(out, torch.zeros_like(out))  # DDIM's last step returns the wrapped x0_hat
    assert not torch.equal(_run(stage), out)


def test_after_step_replaces_x_t(tiny):
    stage, inputs = tiny.stages[0], []
    known = torch.full((2, 3, 8, 8), 0.25)

    def keep_left_half(step):
        x = step.x.clone()
        x[..., :4] = known[..., :4]
        return x

    def record(step):
        inputs.append(step.x.clone())

    out = _run(stage, after_step=keep_left_half, callback=record)
    assert len(inputs) == 4
    for x in inputs:  # what the callback (and the next step) sees is the replaced state
        assert torch.equal(x[..., :4], known[..., :4])
    assert torch.equal(out[..., :4], known[..., :4]) and not torch.equal(out[..., 4:], known[..., 4:])


def test_callback_sees_x0_hat_and_cancel_stops_within_one_step(minilm):
    cascade = Cascade.build(minilm, [("tiny", 8)], steps=4, sampler="ddim")
    steps, calls = [], []
    hook = cascade.stages[0].unet.register_forward_hook(lambda *a: calls.append(1))

    def stop_after_two(step):
        steps.append(step)
        return step.i < 1  # False after the second step

    try:
        with pytest.raises(GenerationCancelled) as err:
            cascade.generate(["a red circle"], seed=0, progress=False, callback=stop_after_two)
    finally:
        hook.remove()
    assert err.value.stage == 0 and err.value.step == 1
    assert len(steps) == 2 and len(calls) == 2  # no U-Net call after the cancelling step
    first = steps[0]
    assert first.stage == 0 and first.num_steps == 4 and first.x0_hat.shape == first.x.shape == (1, 3, 8, 8)
    # x0_hat is the denoised estimate at t, from which DDIM's x is built: x_s = a_s x0_hat + s_s eps_hat
    assert not torch.equal(first.x0_hat, first.x) and not torch.equal(first.x0_hat, first.x_t)


def test_img2img_start_state_cuts_the_timesteps_as_deepfloyd_if(tiny):
    stage = tiny.stages[0]
    image = torch.zeros(2, 3, 8, 8)
    walked = []
    _run(stage, start=noised_image(image, 0.5), callback=lambda s: walked.append(s.t.item()))
    assert walked == stage.schedule.timesteps(4)[2:].tolist()  # init = int(4 * 0.5) = 2: the last two
    with pytest.raises(ValueError, match="strength"):
        noised_image(image, 1.5)


# ----------------------------------------------------------------------------------------------
# training and sampling give the U-Net the same inputs


class Capture(torch.nn.Module):
    """Wraps a U-Net and records the arguments of every call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, x, time, text_embeds, text_mask, lowres=None, noise_level=None):
        self.calls.append(dict(x=x, time=time, text_embeds=text_embeds, text_mask=text_mask,
                               lowres=lowres, noise_level=noise_level))
        return self.unet(x, time, text_embeds, text_mask, lowres=lowres, noise_level=noise_level)


def _same_inputs_in_training_and_sampling(stage, low_res: int, text_dim: int, level_max, monkeypatch):
    from openimagen.train import load_train_config
    from openimagen.train.loop import stage_loss

    cfg = load_train_config("shapes-tiny", None, [])
    base = dataclasses.replace(cfg.stages[0], stage=dataclasses.replace(cfg.stages[0].stage, resolution=low_res))
    cfg = dataclasses.replace(cfg, caption_dropout=0.0, stages=[
        base, dataclasses.replace(cfg.stages[1], noise_level_max=level_max, crop=None)])
    R = stage.resolution
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(1, 3, R, R, generator=g) * 2 - 1
    low = torch.rand(1, 3, low_res, low_res, generator=g) * 2 - 1
    text = {"text_embeds": torch.randn(1, L, text_dim, generator=g), "text_mask": torch.ones(1, L, dtype=torch.bool)}
    monkeypatch.setattr(stage, "unet", Capture(stage.unet))
    images = {R: x0, low_res: low}
    with torch.no_grad():
        stage_loss(cfg, 1, stage.unet, stage, images, ["a caption"],
                   lambda caps: (text["text_embeds"], text["text_mask"]), torch.Generator().manual_seed(9))
    trained = stage.unet.calls[-1]

    # Replay the training step's draws (t, eps, caption dropout, level, augmentation noise) ...
    g = torch.Generator().manual_seed(9)
    t = stage.schedule.sample_t(1, generator=g)
    torch.randn(x0.shape, generator=g)
    torch.rand((1,), generator=g)
    level = stage.lowres_cond.training_levels(1, g, level_max, "cpu")
    noise = torch.randn((1, 3, R, R), generator=g)
    # ... and sample one step from the training step's x_t at its t and level, with its noise.
    monkeypatch.setattr(stage_module, "randn", lambda *a: noise)
    given = lambda shape, ts, stage, generator, device: (trained["x"].float(), t)
    n = len(stage.unet.calls)
    sample_stage(stage, text, text, (1, 3, R, R), t, generator=torch.Generator(), guidance=1.0, lowres=low,
                 noise_level=float(level), start=given, sampler="ddim")
    assert len(stage.unet.calls) == n + 1  # one step, from t straight to the clean state
    sampled = stage.unet.calls[n]
    for k in trained:
        a, b = trained[k], sampled[k]
        assert (a is None) == (b is None), k
        assert a is None or torch.equal(a, b), f"{k} differs between training and sampling"
    return trained


def test_training_and_sampling_build_identical_unet_inputs_for_our_sr_stage(tiny, monkeypatch):
    inputs = _same_inputs_in_training_and_sampling(tiny.stages[1], 8, DIM, 0.3, monkeypatch)
    assert inputs["lowres"].shape == (1, 3, 16, 16) and inputs["noise_level"] is not None


def test_training_and_sampling_build_identical_unet_inputs_for_if_stage_ii(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "checkpoints"))
    from tiny_if import write_checkpoints

    from openimagen.checkpoints.deepfloyd_if import load_if_cascade

    _, _, d1, d2 = write_checkpoints(tmp_path)
    stage = load_if_cascade(str(d1), sr=str(d2)).stages[1]
    assert stage.config.lowres_align_corners  # IF-II's own resize, which training used to ignore
    inputs = _same_inputs_in_training_and_sampling(stage, 16, 32, 250, monkeypatch)
    assert inputs["lowres"].shape == (1, 3, 32, 32)


def test_a_plan_puts_a_start_state_and_hook_into_every_stage_of_generate(minilm):
    from openimagen.sampling import StagePlan

    cascade = Cascade.build(minilm, [("tiny", 8), ("tiny", 16)], steps=3, sampler="ddim")
    shapes, seen = [], []

    def plan(i, shape):
        shapes.append((i, shape))
        fill = lambda step: torch.full_like(step.x, 0.5 if i == 0 else -0.5)
        return StagePlan(after_step=fill)

    out = cascade.generate(["a red circle"], num_images=2, seed=0, progress=False, plan=plan,
                           callback=lambda step: seen.append(step.stage))
    assert shapes == [(0, (2, 3, 8, 8)), (1, (2, 3, 16, 16))] and seen == [0] * 3 + [1] * 3
    assert torch.equal(out.images[0], torch.full((2, 3, 8, 8), 0.5))
    assert torch.equal(out.images[1], torch.full((2, 3, 16, 16), -0.5))
