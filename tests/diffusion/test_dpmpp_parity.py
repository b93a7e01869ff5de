"""DPM-Solver++ 2M / 3M against diffusers' DPMSolverMultistepScheduler (the oracle for the update rule).

The same smooth fake x0-predictor drives both loops on IF's discrete squaredcos_cap_v2 schedule, over the
timesteps diffusers chooses, ending at sigma = 0 (`final_sigmas_type="zero"`, our clean final step);
trajectories agree to float32 rounding. Step counts below 15 exercise `lower_order_final`.
"""
import pytest
import torch

from openimagen.diffusion import Denoised, dpmpp_2m, dpmpp_3m, make_schedule

SAMPLER = {2: dpmpp_2m, 3: dpmpp_3m}


def fake_x0(x, t):
    """A smooth, t-dependent data prediction that stays within a few units."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1, 1)
    return 0.8 * torch.tanh(x + 0.2 * torch.cos(t / 113.0)) - 0.1 * x.flip(1)


def diffusers_loop(x, n, order):
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", solver_order=order,
                                      algorithm_type="dpmsolver++", solver_type="midpoint", prediction_type="sample",
                                      lower_order_final=True, final_sigmas_type="zero")
    sch.set_timesteps(n)
    for t in sch.timesteps:
        x = sch.step(fake_x0(x, t.double()).to(x.dtype), t, x).prev_sample
    return x, sch.timesteps


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("n", [6, 10, 20])
def test_matches_diffusers_step_for_step(order, n):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    want, ts = diffusers_loop(x.clone(), n, order)
    s = make_schedule("ddpm_cosine")

    def denoise(x_t, t):
        a, sg = (c.view(-1, 1, 1, 1).to(x_t) for c in s.alpha_sigma(t))
        x0 = fake_x0(x_t, t)
        return Denoised(x0=x0, eps=(x_t - a * x0) / sg)

    got = SAMPLER[order](denoise, x.clone(), s, ts.float())
    assert (got - want).abs().max().item() < 2e-5
