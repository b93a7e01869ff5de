"""Guidance wrappers: CFG equals its definition, thresholds follow Imagen's formula and keep eps consistent."""
import pytest
import torch

from openimagen.diffusion import (
    Denoised,
    Parameterization,
    classifier_free_guidance,
    dynamic_threshold,
    make_schedule,
    static_threshold,
)

SCHED = make_schedule("ddpm_cosine")
PARAM = Parameterization("eps", learned_variance=True)


def toy_model(x, t, cond):
    """A conditional 'network': output depends on x, t and the per-sample embedding in cond['emb'] (B, 2)."""
    emb = cond["emb"]
    out = torch.cat([torch.tanh(x * emb[:, :1, None, None] + t.view(-1, 1, 1, 1) / 500),
                     torch.tanh(x - emb[:, 1:, None, None])], dim=1)
    a, s = SCHED.alpha_sigma(t)
    return PARAM.to_denoised(out, x, a, s)


def setup(B=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 4, 4, generator=g)
    t = torch.full((B,), 400.0)
    cond = {"emb": torch.randn(B, 2, generator=g), "mask": None}
    uncond = {"emb": torch.zeros(B, 2), "mask": None}
    return x, t, cond, uncond


def test_scale_one_is_the_conditional_model_exactly():
    x, t, cond, uncond = setup()
    d = classifier_free_guidance(toy_model, cond, uncond, 1.0)(x, t)
    ref = toy_model(x, t, cond)
    assert torch.equal(d.x0, ref.x0) and torch.equal(d.eps, ref.eps) and torch.equal(d.var_interp, ref.var_interp)


def test_batched_cfg_equals_two_passes():
    x, t, cond, uncond = setup()
    calls = []

    def counting(x, t, c):
        calls.append(x.shape[0])
        return toy_model(x, t, c)

    d = classifier_free_guidance(counting, cond, uncond, 7.0)(x, t)
    assert calls == [6], "one batched pass over cat([uncond, cond])"
    u, c = toy_model(x, t, uncond), toy_model(x, t, cond)
    torch.testing.assert_close(d.eps, u.eps + 7.0 * (c.eps - u.eps))
    torch.testing.assert_close(d.x0, u.x0 + 7.0 * (c.x0 - u.x0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.var_interp, c.var_interp)  # variance from the conditional half (IF)
    a, s = (v.view(-1, 1, 1, 1) for v in SCHED.alpha_sigma(t))
    torch.testing.assert_close(a * d.x0 + s * d.eps, x, rtol=1e-5, atol=1e-5)


def test_cfg_rejects_mismatched_conditions():
    x, t, cond, uncond = setup()
    with pytest.raises(ValueError, match="same keys"):
        classifier_free_guidance(toy_model, cond, {"emb": uncond["emb"]}, 3.0)
    with pytest.raises(ValueError, match="shape"):
        classifier_free_guidance(toy_model, cond, {"emb": torch.zeros(3, 5), "mask": None}, 3.0)


def fixed(x0):
    """A denoiser that returns a given x0 (and the eps consistent with it)."""
    def denoise(x, t):
        a, s = (v.view(-1, 1, 1, 1) for v in SCHED.alpha_sigma(t))
        return Denoised(x0=x0.clone(), eps=(x - a * x0) / s)
    return denoise


def test_dynamic_threshold_formula():
    n = 1000
    ramp = torch.linspace(-3, 3, n).view(1, 1, 10, 100)   # |x0| quantile 0.9 is about 2.7
    small = torch.linspace(-0.8, 0.8, n).view(1, 1, 10, 100)
    x0 = torch.cat([ramp, small])                          # (2,1,10,100)
    x = torch.randn(2, 1, 10, 100, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 300.0)
    d = dynamic_threshold(fixed(x0), SCHED, percentile=0.9)(x, t)
    s = torch.quantile(ramp.abs().flatten(), 0.9)
    assert 2.6 < s < 2.8
    torch.testing.assert_close(d.x0[0], ramp[0].clamp(-s, s) / s)
    assert d.x0.abs().max() <= 1.0
    assert torch.equal(d.x0[1], small[0]), "a sample whose quantile is below 1 is unchanged"
    a, sg = (v.view(-1, 1, 1, 1) for v in SCHED.alpha_sigma(t))
    torch.testing.assert_close(d.eps, (x - a * d.x0) / sg)  # eps recomputed from the thresholded x0


def test_dynamic_threshold_max_value_caps_s():
    ramp = torch.linspace(-3, 3, 1000).view(1, 1, 10, 100)
    x = torch.zeros_like(ramp)
    d = dynamic_threshold(fixed(ramp), SCHED, percentile=0.9, max_value=1.5)(x, torch.tensor([300.0]))
    torch.testing.assert_close(d.x0, ramp.clamp(-1.5, 1.5) / 1.5)
    assert d.x0.abs().max() == 1.0


def test_row_quantile_matches_torch_quantile():
    x0 = torch.randn(4, 3, 7, 5, generator=torch.Generator().manual_seed(2)) * 3
    for p in (0.5, 0.95, 0.995, 1.0):
        d = dynamic_threshold(fixed(x0), SCHED, percentile=p)(torch.zeros_like(x0), torch.full((4,), 10.0))
        s = torch.quantile(x0.abs().reshape(4, -1), p, dim=1).clamp(min=1).view(-1, 1, 1, 1)
        torch.testing.assert_close(d.x0, x0.clamp(-s, s) / s)


def test_static_threshold_and_composition():
    x, t, cond, uncond = setup()
    guided = classifier_free_guidance(toy_model, cond, uncond, 9.0)
    d = static_threshold(guided, SCHED)(x, t)
    torch.testing.assert_close(d.x0, guided(x, t).x0.clamp(-1, 1))
    d2 = dynamic_threshold(guided, SCHED, 0.95, 1.0)(x, t)  # max_value 1 is plain clipping (IF stage II)
    torch.testing.assert_close(d2.x0, d.x0)
    torch.testing.assert_close(d2.eps, d.eps)


def test_threshold_bad_arguments():
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(fixed(torch.zeros(1)), SCHED, percentile=99.5)
    with pytest.raises(ValueError, match="max_value"):
        dynamic_threshold(fixed(torch.zeros(1)), SCHED, max_value=0.5)
