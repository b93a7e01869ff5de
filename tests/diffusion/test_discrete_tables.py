"""Discrete schedules from any beta table, and DDIM on the x4 upscaler's real scheduler config, against diffusers.

The real config (stage3_and_editing.md §1.2.5: scaled_linear, v-prediction, steps_offset 1, set_alpha_to_one
false, no clipping) is not covered by the tiny pipeline tests, whose DDIM uses linear betas and clips.
"""
import pytest
import torch

from openimagen.diffusion import Parameterization, ScheduleConfig, ddim, make_schedule

diffusers = pytest.importorskip("diffusers")
X4_DDIM = dict(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000,
               prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize("table", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_equal_diffusers_bit_for_bit(table):
    ours = make_schedule(ScheduleConfig(kind="discrete", betas=table)).alphas_cumprod
    ref = diffusers.DDPMScheduler(beta_schedule=table).alphas_cumprod
    assert torch.equal(ours, ref)


def test_ddim_on_the_real_x4_config_equals_diffusers():
    cfg = ScheduleConfig(kind="discrete", betas="scaled_linear", steps_offset=1, set_alpha_to_one=False)
    schedule, param = make_schedule(cfg), Parameterization(kind="v")
    ref = diffusers.DDIMScheduler(**X4_DDIM)
    ref.set_timesteps(75)
    assert schedule.timesteps(75).long().tolist() == ref.timesteps.tolist()  # 963, 950, ..., 1
    ref.set_timesteps(6)
    ts = schedule.timesteps(6)
    assert ts.long().tolist() == ref.timesteps.tolist()

    def v_model(x, t):  # any smooth function of (x, t) stands in for the U-Net
        return 0.3 * x + torch.sin(x + t.reshape(-1, 1, 1, 1) / 300)

    x0 = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    x = x0.clone()
    for t in ref.timesteps:
        x = ref.step(v_model(x, t.float().expand(1)), t, x).prev_sample

    def denoise(x, t):
        a, s = schedule.alpha_sigma(t)
        return param.to_denoised(v_model(x, t), x, a, s)

    ours = ddim(denoise, x0.clone(), schedule, ts)
    assert (ours - x).abs().max().item() < 1e-5
    # the last step lands on alphas_cumprod[0] (0.9999), not the clean state: that differs visibly
    clean = ddim(denoise, x0.clone(), make_schedule(ScheduleConfig(kind="discrete", betas="scaled_linear",
                                                                    steps_offset=1)), ts)
    assert (clean - x).abs().max().item() > 1e-3


def test_discrete_fields_round_trip_and_stay_out_of_older_json():
    from openimagen.config import from_dict, to_dict

    cfg = ScheduleConfig(kind="discrete", betas="scaled_linear", beta_end=0.012, steps_offset=1, set_alpha_to_one=False)
    assert from_dict(ScheduleConfig, to_dict(cfg)) == cfg
    assert "betas" not in to_dict(ScheduleConfig(kind="ddpm_cosine"))  # files written before these fields: unchanged
