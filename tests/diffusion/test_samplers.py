"""Samplers against closed forms: Gaussian data with an exact (oracle) denoiser.

For x0 ~ N(mu, sd^2) per dimension, x_t = alpha x0 + sigma eps has E[x0 | x_t] = (alpha sd^2 x_t + sigma^2 mu) /
(alpha^2 sd^2 + sigma^2) in closed form, and the probability-flow ODE maps x_t to mu + sd * z exactly, where
z = (x_t - alpha mu) / sqrt(alpha^2 sd^2 + sigma^2). Deterministic samplers must approach that map sample by sample;
stochastic ones must reproduce the mean and variance that their linear-Gaussian chain predicts in closed form.
"""
import math

import pytest
import torch

from openimagen.diffusion import SAMPLERS, Denoised, ddim, ddpm, dpmpp_2m, dpmpp_3m, make_schedule

MU = torch.tensor([0.5, -0.3, 0.0, 1.0]).view(1, 4, 1, 1)
SD = torch.tensor([0.5, 1.0, 0.2, 0.8]).view(1, 4, 1, 1)
N = 4000


def oracle(schedule, calls=None):
    def denoise(x, t):
        assert t.shape == (x.shape[0],)
        if calls is not None:
            calls.append(t[0].item())
        a, s = (c.view(-1, 1, 1, 1) for c in schedule.alpha_sigma(t))
        x0 = (a * SD**2 * x + s**2 * MU) / (a**2 * SD**2 + s**2)
        return Denoised(x0=x0, eps=(x - a * x0) / s)
    return denoise


def start(schedule, ts, seed=0):
    """z and x drawn from the exact marginal at ts[0] (so only the sampler's error remains)."""
    z = torch.randn(N, 4, 1, 1, generator=torch.Generator().manual_seed(seed))
    a, s = schedule.alpha_sigma(ts[:1])
    return z, a * MU + (a**2 * SD**2 + s**2).sqrt() * z


def abar_of(schedule, t):
    if schedule.discrete:
        return schedule.alphas_cumprod.double()[int(t)]
    return torch.sigmoid(schedule.logsnr(torch.tensor([float(t)])).double())[0]


def predicted_moments(schedule, ts, eta):
    """Mean and std (per dim, float64) after the chain x_s = A x_t + b + c z, A, b, c from Song et al. 2021 eq. 12
    in abar form (eta = 1 with posterior variance is DDPM, Ho et al. 2020 eq. 7)."""
    mu, sd = MU.flatten().double(), SD.flatten().double()
    ab = abar_of(schedule, ts[0])
    m, v = ab.sqrt() * mu, ab * sd**2 + (1 - ab)
    for i, t in enumerate(ts.tolist()):
        ab_t = abar_of(schedule, t)
        ab_s = abar_of(schedule, ts[i + 1]) if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        k = ab_t.sqrt() * sd**2 / (ab_t * sd**2 + 1 - ab_t)        # x0_hat = k x + j
        j = (1 - ab_t) * mu / (ab_t * sd**2 + 1 - ab_t)
        c2 = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)  # variance added this step
        e = ((1 - ab_s - c2).clamp_min(0)).sqrt() / (1 - ab_t).sqrt()  # coefficient of eps_hat = (x - sqrt(ab_t) x0_hat)/sigma_t
        A = ab_s.sqrt() * k + e * (1 - ab_t.sqrt() * k)
        b = ab_s.sqrt() * j - e * ab_t.sqrt() * j
        m, v = A * m + b, A**2 * v + c2
    return m, v.sqrt()


@pytest.mark.parametrize("kind", ["cosine", "ddpm_cosine"])
@pytest.mark.parametrize("sampler,eta", [("ddpm", 1.0), ("ddim", 1.0), ("ddim", 0.5)])
def test_stochastic_samplers_match_closed_form_moments(kind, sampler, eta):
    s = make_schedule(kind)
    ts = s.timesteps(50)
    _, x = start(s, ts)
    kw = {"eta": eta} if sampler == "ddim" else {}
    out = SAMPLERS[sampler](oracle(s), x, s, ts, generator=torch.Generator().manual_seed(1), **kw)
    m_pred, sd_pred = predicted_moments(s, ts, eta)
    m, sd = out.double().mean((0, 2, 3)), out.double().std((0, 2, 3))
    # Sampling error of N = 4000: mean 4.5 standard errors, std 3.5% relative.
    assert (m - m_pred).abs().max() < 4.5 * (sd_pred / math.sqrt(N)).max(), (m, m_pred)
    assert ((sd / sd_pred) - 1).abs().max() < 0.035, (sd, sd_pred)
    # ...and the chain itself is close to the data (fixed-small variance undershoots at 50 steps).
    assert (m - MU.flatten()).abs().max() < 0.05
    assert ((sd / SD.flatten()) - 1).abs().max() < 0.16


def test_ddpm_full_chain_matches_data():
    s = make_schedule("ddpm_cosine")
    ts = s.timesteps(1000)
    _, x = start(s, ts)
    out = ddpm(oracle(s), x, s, ts, generator=torch.Generator().manual_seed(2))
    assert (out.mean((0, 2, 3)) - MU.flatten()).abs().max() < 0.05
    assert ((out.std((0, 2, 3)) / SD.flatten()) - 1).abs().max() < 0.04


@pytest.mark.parametrize("kind", ["cosine", "linear", "ddpm_cosine"])
def test_deterministic_samplers_follow_the_exact_ode(kind):
    s = make_schedule(kind)
    ts = s.timesteps(100)
    z, x = start(s, ts)
    exact = MU + SD * z                     # the probability-flow ODE's endpoint for each sample
    err_ddim = (ddim(oracle(s), x, s, ts) - exact).abs().max().item()
    err_dpm = (dpmpp_2m(oracle(s), x, s, ts) - exact).abs().max().item()
    assert err_ddim < 0.08, err_ddim       # first order: measured 0.05-0.075 at 100 steps
    assert err_dpm < 0.02, err_dpm         # second order: measured 0.005-0.016
    assert err_dpm < err_ddim / 3
    err_dpm3 = (dpmpp_3m(oracle(s), x, s, ts) - exact).abs().max().item()
    assert err_dpm3 < 0.02, err_dpm3       # measured 0.004-0.012 (the clean final step x = x0_hat dominates)
    out = dpmpp_2m(oracle(s), x, s, ts)
    assert (out.mean((0, 2, 3)) - MU.flatten()).abs().max() < 0.05
    assert ((out.std((0, 2, 3)) / SD.flatten()) - 1).abs().max() < 0.05


def test_dpmpp_converges_at_second_order():
    s = make_schedule("linear")
    errs = []
    for n in (50, 100, 200):
        ts = s.timesteps(n)
        z, x = start(s, ts)
        errs.append((dpmpp_2m(oracle(s), x, s, ts) - (MU + SD * z)).abs().max().item())
    assert errs[0] / errs[1] > 2.8 and errs[1] / errs[2] > 2.8, errs  # first order would give ~2


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_walks_every_timestep_once_and_ends_clean(name):
    s = make_schedule("ddpm_cosine")
    ts = torch.tensor([999.0, 640.0, 17.0])
    calls, seen = [], []
    x = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS[name](oracle(s, calls), x, s, ts, generator=torch.Generator().manual_seed(0),
                         callback=lambda st: seen.append((st.i, st.t.item())))
    assert calls == [999.0, 640.0, 17.0]
    assert seen == [(0, 999.0), (1, 640.0), (2, 17.0)]
    # The last step goes to the clean state: the output is the final x0_hat, whatever t the list ends at.
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_x0_hat_and_its_tensor_replaces_x(name):
    s = make_schedule("ddpm_cosine")
    ts = torch.tensor([999.0, 500.0, 100.0])
    x = torch.randn(2, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    steps, inputs = [], []

    def denoise(x_t, t):
        inputs.append(x_t.clone())
        return oracle(s)(x_t, t)

    def hook(st):
        steps.append(st)
        return torch.full_like(st.x, float(st.i))  # replace the state after every step

    out = SAMPLERS[name](denoise, x, s, ts, generator=torch.Generator().manual_seed(0), callback=hook)
    assert [st.i for st in steps] == [0, 1, 2] and all(st.num_steps == 3 for st in steps)
    assert [st.last for st in steps] == [False, False, True]
    assert torch.equal(steps[0].x_t, x)
    d0 = oracle(s)(x, ts[0].expand(2))
    assert torch.equal(steps[0].x0_hat, d0.x0)          # the denoised estimate at t, not x_t
    assert torch.equal(inputs[1], torch.zeros_like(x))  # the next step starts from the replacement
    assert torch.equal(inputs[2], torch.ones_like(x))
    assert torch.equal(out, torch.full_like(x, 2.0))    # and so does the result


def test_ddpm_is_seeded_and_the_final_step_draws_no_noise():
    s = make_schedule("cosine")
    x = torch.randn(8, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    a = ddpm(oracle(s), x, s, s.timesteps(5), generator=torch.Generator().manual_seed(5))
    b = ddpm(oracle(s), x, s, s.timesteps(5), generator=torch.Generator().manual_seed(5))
    c = ddpm(oracle(s), x, s, s.timesteps(5), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g = torch.Generator().manual_seed(5)
    ddpm(oracle(s), x, s, s.timesteps(5), generator=g)
    ref = torch.Generator().manual_seed(5)
    for _ in range(4):  # 5 steps, 4 noisy transitions
        torch.randn(x.shape, generator=ref)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=ref))


def test_ddim_eta0_is_deterministic_and_ignores_the_generator():
    s = make_schedule("linear")
    x = torch.randn(4, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    a = ddim(oracle(s), x, s, s.timesteps(7), generator=torch.Generator().manual_seed(1))
    b = ddim(oracle(s), x, s, s.timesteps(7), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_bad_timesteps_raise():
    s = make_schedule("ddpm_cosine")
    x = torch.randn(2, 4, 1, 1)
    with pytest.raises(ValueError, match="descending"):
        ddpm(oracle(s), x, s, [0.0, 500.0])
    with pytest.raises(ValueError, match="eta"):
        ddim(oracle(s), x, s, [999.0, 0.0], eta=-1.0)
