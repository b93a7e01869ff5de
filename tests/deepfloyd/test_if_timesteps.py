"""IF's named timestep lists equal diffusers' hand-copied lists exactly."""
import pytest

from openimagen.deepfloyd.timesteps import RESPACINGS, named_timesteps


@pytest.mark.parametrize("name", sorted(RESPACINGS))
def test_named_lists_equal_diffusers(name):
    from diffusers.pipelines.deepfloyd_if import timesteps as ref

    assert named_timesteps(name) == list(getattr(ref, f"{name}_timesteps"))


def test_plain_count_is_even_spacing_and_bad_names_are_rejected():
    steps = named_timesteps("10")
    assert len(steps) == 10 and steps[0] == 999 and steps[-1] == 0
    with pytest.raises(ValueError, match="unknown timestep list 'smart51'"):
        named_timesteps("smart51")
