"""Our DDPM sampler (+ threshold wrappers) against diffusers' DDPMScheduler.step, as DeepFloyd IF configures it.

A fake 6-channel "U-Net" (eps on 3 channels, learned-range v on 3) is run through both loops with the same
starting noise and the same seeded generator; the trajectories must agree to 1e-5.

Lists end at t = 0 here. When a list ends above 0 (e.g. "trailing" spacing), diffusers still adds learned-range
noise on the step to the clean state (posterior variance floored at 1e-20); we add none, since that step's
posterior variance is zero. The test below pins that choice.
"""
import pytest
import torch

from openimagen.diffusion import (
    Parameterization,
    ddpm,
    dynamic_threshold,
    make_schedule,
    static_threshold,
)


def fake_unet(x, t):
    """(B,3,H,W), scalar or (B,) t -> (B,6,H,W): a smooth, t-dependent eps and a v in (-1, 1)."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
    # Mostly x itself (as a trained eps-model is at high noise), so x0_hat stays within a few units and
    # float32 rounding stays far below the tolerance even without thresholding.
    eps = 0.9 * x + 0.3 * torch.tanh(1.3 * x + 0.1 * torch.cos(t / 97.0))
    v = torch.tanh(0.7 * x.flip(1) - t / 1000.0)
    return torch.cat([eps, v], dim=1)


def diffusers_loop(x, timesteps, generator, **sched_kw):
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", **sched_kw)
    if timesteps is None:
        sch.set_timesteps(4)
    else:
        sch.set_timesteps(timesteps=timesteps)
    for t in sch.timesteps:
        x = sch.step(fake_unet(x, t.float()), t, x, generator=generator).prev_sample
    return x, sch.timesteps.float()


CASES = {
    "dynamic": dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5),
    "clip": dict(thresholding=False, clip_sample=True),
    "off": dict(thresholding=False, clip_sample=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("timesteps", [None, [999, 700, 301, 0], [960, 500, 20, 1, 0]])
def test_ddpm_learned_range_matches_diffusers(case, timesteps):
    schedule = make_schedule("ddpm_cosine")
    param = Parameterization("eps", learned_variance=True)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.1

    want, ts = diffusers_loop(x_T.clone(), timesteps, torch.Generator().manual_seed(42), **CASES[case])

    def denoise(x, t):
        a, s = schedule.alpha_sigma(t)
        return param.to_denoised(fake_unet(x, t), x, a, s)

    if case == "dynamic":
        denoise = dynamic_threshold(denoise, schedule, percentile=0.95, max_value=1.5)
    elif case == "clip":
        denoise = static_threshold(denoise, schedule)
    got = ddpm(denoise, x_T.clone(), schedule, ts, generator=torch.Generator().manual_seed(42))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fixed_small_variance_matches_diffusers():
    from diffusers import DDPMScheduler

    schedule = make_schedule("ddpm_cosine")
    sch = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    sch.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(7)
    want = x.clone()
    for t in sch.timesteps:
        want = sch.step(fake_unet(want, t.float())[:, :3], t, want, generator=g).prev_sample

    param = Parameterization("eps")

    def denoise(x, t):
        a, s = schedule.alpha_sigma(t)
        return param.to_denoised(fake_unet(x, t)[:, :3], x, a, s)

    got = ddpm(denoise, x, schedule, sch.timesteps.float(), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_list_ending_above_zero_adds_no_noise_on_the_last_step():
    schedule = make_schedule("ddpm_cosine")
    param = Parameterization("eps", learned_variance=True)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))

    def denoise(x, t):
        a, s = schedule.alpha_sigma(t)
        return param.to_denoised(fake_unet(x, t), x, a, s)

    # One step from t = 20 straight to the clean state: the result is x0_hat, whatever the generator.
    out = ddpm(denoise, x, schedule, [20.0], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, denoise(x, torch.full((2,), 20.0)).x0, atol=1e-6, rtol=0)
