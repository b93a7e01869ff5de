"""Schedules: endpoints, monotone log-SNR, variance preservation, parity with diffusers' DDPM tables."""
import math

import pytest
import torch

from openimagen.config import from_dict, to_dict
from openimagen.diffusion import (
    IF_RESPACINGS,
    ScheduleConfig,
    as_timesteps,
    gaussian_posterior,
    make_schedule,
    respaced_timesteps,
)

KINDS = ["cosine", "linear", "ddpm_cosine"]


def _grid(s, n=201):
    if s.discrete:
        return torch.arange(0, 1000, dtype=torch.float32)
    return torch.linspace(0, 1, n)


@pytest.mark.parametrize("kind", KINDS)
def test_variance_preserving_and_monotone(kind):
    s = make_schedule(kind)
    t = _grid(s)
    a, sig = s.alpha_sigma(t)
    assert a.dtype == torch.float32 and a.shape == t.shape
    torch.testing.assert_close(a**2 + sig**2, torch.ones_like(a), atol=1e-6, rtol=0)
    lam = s.logsnr(t)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease strictly with t"
    torch.testing.assert_close(lam, torch.log(a**2 / sig**2), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_endpoints(kind):
    s = make_schedule(kind)
    lo, hi = (torch.tensor([0.0]), torch.tensor([999.0])) if s.discrete else (torch.tensor([0.0]), torch.tensor([1.0]))
    a0, s0 = s.alpha_sigma(lo)
    a1, s1 = s.alpha_sigma(hi)
    assert a0.item() > 0.999 and s0.item() < 0.011
    assert a1.item() < 0.01 and s1.item() > 0.9999


def test_cosine_hits_clip_range_exactly():
    s = make_schedule(ScheduleConfig(kind="cosine", logsnr_min=-15.0, logsnr_max=12.0))
    lam = s.logsnr(torch.tensor([0.0, 0.5, 1.0]))
    u0, u1 = math.atan(math.exp(-6.0)), math.atan(math.exp(7.5))  # angles where logsnr = 12 and -15
    mid = -2 * math.log(math.tan((u0 + u1) / 2))
    torch.testing.assert_close(lam, torch.tensor([12.0, mid, -15.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_logsnr_shift_moves_the_curve_and_keeps_the_clip_range(kind):
    plain, shifted = make_schedule(kind), make_schedule(ScheduleConfig(kind=kind, logsnr_shift=-3.0))
    t = torch.linspace(0.05, 0.95, 19)
    torch.testing.assert_close(shifted.logsnr(t), plain.logsnr(t) - 3.0, atol=1e-5, rtol=0)
    a, sig = shifted.alpha_sigma(t)
    torch.testing.assert_close(a**2 + sig**2, torch.ones_like(a), atol=1e-6, rtol=0)
    far = make_schedule(ScheduleConfig(kind=kind, logsnr_shift=-15.0)).logsnr(torch.tensor([0.0, 1.0]))
    assert far[0].item() <= 5.0 + 1e-4 and far[1].item() == -20.0  # the clip range still holds
    with pytest.raises(ValueError, match="continuous kinds"):
        ScheduleConfig(kind="ddpm_cosine", logsnr_shift=-1.0)


def test_linear_is_vdm_closed_form():
    s = make_schedule("linear")
    t = torch.tensor([0.0, 0.3, 0.9])
    want = torch.tensor([-math.log(math.expm1(1e-4 + 10 * v**2)) for v in t.tolist()])
    torch.testing.assert_close(s.logsnr(t), want, atol=1e-5, rtol=0)


def test_ddpm_cosine_alphas_cumprod_match_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000)
    s = make_schedule("ddpm_cosine")
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)
    t = torch.tensor([0.0, 1.0, 250.0, 998.0, 999.0])
    a, sig = s.alpha_sigma(t)
    idx = t.long()
    torch.testing.assert_close(a, ref.alphas_cumprod[idx].sqrt(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sig, (1 - ref.alphas_cumprod[idx]).sqrt(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_discrete_timesteps_match_diffusers(spacing):
    from diffusers import DDPMScheduler

    s = make_schedule("ddpm_cosine")
    for n in [1, 3, 7, 16, 27, 50, 100, 1000]:
        ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing)
        ref.set_timesteps(n)
        ours = s.timesteps(n, spacing)
        assert ours.dtype == torch.float32
        assert ours.tolist() == ref.timesteps.tolist(), (spacing, n)


def test_leading_is_default_and_ends_at_zero():
    s = make_schedule("ddpm_cosine")
    assert s.timesteps(100)[:3].tolist() == [990.0, 980.0, 970.0] and s.timesteps(100)[-1].item() == 0


def test_continuous_timesteps_grid():
    s = make_schedule("cosine")
    torch.testing.assert_close(s.timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    with pytest.raises(ValueError, match="uniform"):
        s.timesteps(4, "leading")


def test_if_respacings_match_published_lists():
    from diffusers.pipelines.deepfloyd_if import timesteps as published

    for name in IF_RESPACINGS:
        assert respaced_timesteps(name).long().tolist() == getattr(published, f"{name}_timesteps"), name
    assert respaced_timesteps("10,10,3,2,2").tolist() == respaced_timesteps("fast27").tolist()


def test_bad_input_raises_value_errors():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        ScheduleConfig(kind="sigmoid")
    with pytest.raises(ValueError, match="logsnr_min"):
        ScheduleConfig(logsnr_min=5.0, logsnr_max=-5.0)
    s = make_schedule("ddpm_cosine")
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.alpha_sigma(torch.tensor([1000.0]))
    with pytest.raises(ValueError, match="spacing"):
        s.timesteps(10, "karras")
    with pytest.raises(ValueError, match="descending"):
        as_timesteps(s, [0, 500, 999])
    with pytest.raises(ValueError, match="integer"):
        as_timesteps(s, [999, 500.5, 0])
    with pytest.raises(ValueError, match="respacing"):
        respaced_timesteps("smart99")


def test_sample_t_ranges_and_seeding():
    for kind in KINDS:
        s = make_schedule(kind)
        t1 = s.sample_t(512, generator=torch.Generator().manual_seed(3))
        t2 = s.sample_t(512, generator=torch.Generator().manual_seed(3))
        assert torch.equal(t1, t2) and t1.shape == (512,) and t1.dtype == torch.float32
        if s.discrete:
            assert t1.min() >= 0 and t1.max() <= 999 and torch.equal(t1, t1.round())
            assert torch.equal(s.model_time(t1), t1)
        else:
            assert t1.min() >= 0 and t1.max() < 1
            torch.testing.assert_close(s.model_time(t1), t1 * 1000)


def test_config_json_round_trip():
    cfg = ScheduleConfig(kind="linear", logsnr_min=-12.0)
    assert from_dict(ScheduleConfig, to_dict(cfg)) == cfg


def test_gaussian_posterior_matches_ddpm_closed_form():
    # Ho et al. 2020 eq. 7 in abar form, against our alpha/sigma form, on adjacent discrete steps.
    s = make_schedule("ddpm_cosine")
    abar = s.alphas_cumprod.double()
    t = torch.tensor([1.0, 500.0, 999.0])
    a_t, s_t = s.alpha_sigma(t)
    a_s, s_s = s.alpha_sigma(t - 1)
    c_x0, c_xt, var, beta = gaussian_posterior(a_t, s_t, a_s, s_s)
    ab_t, ab_s = abar[t.long()], abar[t.long() - 1]
    b = 1 - ab_t / ab_s
    torch.testing.assert_close(beta.double(), b, rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(c_x0.double(), ab_s.sqrt() * b / (1 - ab_t), rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(c_xt.double(), (1 - b).sqrt() * (1 - ab_s) / (1 - ab_t), rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(var.double(), (1 - ab_s) / (1 - ab_t) * b, rtol=2e-4, atol=1e-9)
