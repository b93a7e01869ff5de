"""Losses: min-SNR weights in closed form, zero loss at the exact target, VLB trains only the variance."""
import pytest
import torch

from openimagen.diffusion import Parameterization, diffusion_loss, make_schedule, min_snr_weight, vlb_term


def batch(schedule, B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 3, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(B, 3, 4, 4, generator=g)
    t = schedule.sample_t(B, generator=g)
    return x0, eps, t


def test_min_snr_weights_closed_form():
    logsnr = torch.tensor([-4.0, 0.0, 1.0, 3.0])
    snr = logsnr.exp()
    g = 5.0
    torch.testing.assert_close(min_snr_weight(logsnr, "eps", g), torch.minimum(snr, torch.tensor(g)) / snr)
    torch.testing.assert_close(min_snr_weight(logsnr, "v", g), torch.minimum(snr, torch.tensor(g)) / (snr + 1))
    torch.testing.assert_close(min_snr_weight(logsnr, "x0", g), torch.minimum(snr, torch.tensor(g)))
    # Below gamma the eps weight is exactly 1 (plain MSE); above it, gamma / snr.
    assert min_snr_weight(torch.tensor([0.0]), "eps", g).item() == pytest.approx(1.0)
    assert min_snr_weight(torch.tensor([3.0]), "eps", g).item() == pytest.approx(5.0 / torch.tensor(3.0).exp().item())
    with pytest.raises(ValueError, match="min_snr_gamma"):
        min_snr_weight(logsnr, "eps", 0.0)


@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
@pytest.mark.parametrize("sched", ["cosine", "ddpm_cosine"])
def test_zero_at_exact_target_and_targets_invert(kind, sched):
    s = make_schedule(sched)
    p = Parameterization(kind)
    x0, eps, t = batch(s)
    a, sg = s.alpha_sigma(t)
    target = p.target(x0, eps, a, sg)
    assert diffusion_loss(target, x0, eps, t, s, p).item() == 0.0
    assert diffusion_loss(target, x0, eps, t, s, p, min_snr_gamma=5.0).item() == 0.0
    # The target turned back through to_denoised recovers x0 and eps.
    x_t = a.view(-1, 1, 1, 1) * x0 + sg.view(-1, 1, 1, 1) * eps
    d = p.to_denoised(target, x_t, a, sg)
    torch.testing.assert_close(d.x0, x0, atol=1e-3 if kind == "eps" else 1e-5, rtol=1e-3)
    torch.testing.assert_close(d.eps, eps, atol=1e-3 if kind == "x0" else 1e-5, rtol=1e-3)


@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
def test_weighted_loss_is_weighted_mse(kind):
    s = make_schedule("cosine")
    p = Parameterization(kind)
    x0, eps, t = batch(s)
    a, sg = s.alpha_sigma(t)
    delta = torch.arange(1, 7, dtype=torch.float32).view(-1, 1, 1, 1) * 0.1
    out = p.target(x0, eps, a, sg) + delta
    w = min_snr_weight(s.logsnr(t), kind, 5.0)
    want = (w * delta.flatten() ** 2).mean()
    torch.testing.assert_close(diffusion_loss(out, x0, eps, t, s, p, min_snr_gamma=5.0), want)
    torch.testing.assert_close(diffusion_loss(out, x0, eps, t, s, p), (delta.flatten() ** 2).mean())


@pytest.mark.parametrize("sched", ["cosine", "ddpm_cosine"])
def test_vlb_is_zero_at_true_posterior_and_trains_only_the_variance(sched):
    s = make_schedule(sched)
    p = Parameterization("eps", learned_variance=True)
    x0, eps, t = batch(s, B=8)
    t[0] = 0.0  # no previous step: the decoder term is left out
    a, sg = s.alpha_sigma(t)
    # v = -1 selects the posterior variance: with the exact eps the model's Gaussian is the true posterior.
    exact = torch.cat([eps, -torch.ones_like(eps)], dim=1)
    assert diffusion_loss(exact, x0, eps, t, s, p).abs().item() < 1e-4

    out = torch.cat([eps + 0.1, torch.zeros_like(eps)], dim=1).requires_grad_(True)
    x_t = a.view(-1, 1, 1, 1) * x0 + sg.view(-1, 1, 1, 1) * eps
    kl = vlb_term(out, x0, x_t, t, s, p)
    assert kl[0] == 0 and (kl[1:] > 0).all()
    kl.sum().backward()
    assert out.grad[:, :3].abs().max() == 0, "stop-gradient: the VLB term must not train the mean"
    assert out.grad[1:, 3:].abs().max() > 0 and torch.isfinite(out.grad).all()


def test_loss_rejects_wrong_channel_count():
    s = make_schedule("cosine")
    x0, eps, t = batch(s)
    with pytest.raises(ValueError, match="channels"):
        diffusion_loss(torch.zeros(6, 3, 4, 4), x0, eps, t, s, Parameterization("eps", learned_variance=True))
    with pytest.raises(ValueError, match="parameterization"):
        Parameterization("score")
