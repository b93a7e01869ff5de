"""The cascade: shapes at every stage, seeded determinism, save/load round trip, clear errors."""
import json

import pytest
import torch

from openimagen.cascade import Cascade, ModelFolderError

PROMPTS = ["a red circle above a blue square", "three green triangles"]


@pytest.fixture(scope="module")
def cascade(minilm):
    return Cascade.build(minilm, [("tiny", 8), ("tiny", 16), ("tiny", 32)], steps=3, sampler="ddim")


def _perturb(cascade):
    # Zero-initialised output layers make an untrained model's output trivially seed-independent;
    # random weights make the round-trip tests meaningful.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cascade.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def test_three_stages_generate_at_every_resolution(cascade):
    out = cascade.generate(PROMPTS, num_images=2, guidance=3.0, seed=0, progress=False)
    assert [tuple(x.shape) for x in out.images] == [(4, 3, 8, 8), (4, 3, 16, 16), (4, 3, 32, 32)]
    assert all(torch.isfinite(x).all() and x.abs().max() <= 1 for x in out.images)
    assert out.prompts == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert out.pil(-1)[0].size == (32, 32)


def test_same_seed_bitwise_identical_other_seed_differs(cascade):
    _perturb(cascade)
    a = cascade.generate(PROMPTS, guidance=2.0, seed=7, progress=False)
    b = cascade.generate(PROMPTS, guidance=2.0, seed=7, progress=False)
    c = cascade.generate(PROMPTS, guidance=2.0, seed=8, progress=False)
    for x, y in zip(a.images, b.images):
        assert torch.equal(x, y)
    assert not torch.equal(a.images[-1], c.images[-1])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_save_load_gives_identical_output(cascade, tmp_path, sampler, minilm):
    _perturb(cascade)
    cascade.save_pretrained(tmp_path)
    loaded = Cascade.from_pretrained(tmp_path, text_encoder=minilm)
    kw = dict(guidance=2.5, seed=3, sampler=sampler, progress=False)
    a, b = cascade.generate(PROMPTS[:1], **kw), loaded.generate(PROMPTS[:1], **kw)
    for x, y in zip(a.images, b.images):
        assert torch.equal(x, y)


def test_loading_rebuilds_the_text_encoder_from_the_saved_spec(cascade, tmp_path):
    cascade.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "cascade.json").read_text())["text_encoder"]["kind"] == "minilm"
    loaded = Cascade.from_pretrained(tmp_path)
    assert loaded.text_encoder.dim == 384


def test_missing_or_corrupt_files_give_clear_errors(cascade, tmp_path, minilm):
    cascade.save_pretrained(tmp_path)
    (tmp_path / "stage_1" / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelFolderError, match=r"stage_1.*corrupt"):
        Cascade.from_pretrained(tmp_path, text_encoder=minilm)
    (tmp_path / "stage_1" / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"stage_1.*model.safetensors is missing"):
        Cascade.from_pretrained(tmp_path, text_encoder=minilm)
    (tmp_path / "stage_0" / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"stage_0.*config.json is not valid JSON"):
        Cascade.from_pretrained(tmp_path, text_encoder=minilm)
    (tmp_path / "cascade.json").unlink()
    with pytest.raises(ModelFolderError, match="no cascade.json"):
        Cascade.from_pretrained(tmp_path)
    with pytest.raises(ModelFolderError, match="does not exist"):
        Cascade.from_pretrained(tmp_path / "nowhere")


def test_weights_that_do_not_match_the_config_are_rejected(cascade, tmp_path, minilm):
    from safetensors.torch import load_file, save_file

    cascade.save_pretrained(tmp_path)
    path = tmp_path / "stage_0" / "model.safetensors"
    state = load_file(str(path))
    state.pop(next(iter(state)))
    save_file(state, str(path))
    with pytest.raises(ModelFolderError, match="does not match"):
        Cascade.from_pretrained(tmp_path, text_encoder=minilm)


def test_bad_generate_arguments(cascade):
    with pytest.raises(ValueError, match="empty prompt"):
        cascade.generate([""], progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        cascade.generate(PROMPTS, steps=0, progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        cascade.generate(PROMPTS, sampler="euler", progress=False)
    with pytest.raises(ValueError, match=r"2 entries but 3 stage\(s\) run"):
        cascade.generate(PROMPTS, steps=[2, 2], progress=False)
    with pytest.raises(ValueError, match=r"one per stage of the cascade \(3\)"):
        cascade.generate(PROMPTS, steps=[2, 2, 2, 2], stop_at=2, progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        cascade.generate([], progress=False)


def test_stop_at_takes_per_stage_lists_for_the_whole_cascade(cascade):
    # a list with one entry per stage of the cascade works with stop_at; the entries past it are unused
    a = cascade.generate(PROMPTS[:1], steps=[2, 3, 99], seed=0, stop_at=2, progress=False)
    b = cascade.generate(PROMPTS[:1], steps=[2, 3], seed=0, stop_at=2, progress=False)
    assert len(a.images) == 2 and all(torch.equal(x, y) for x, y in zip(a.images, b.images))


def test_guidance_one_equals_the_conditional_model(cascade):
    # With scale 1 the unconditional branch must not influence the result at all.
    _perturb(cascade)
    a = cascade.generate(PROMPTS[:1], guidance=1.0, seed=0, stop_at=1, progress=False)
    b = cascade.generate(PROMPTS[:1], guidance=1.0, negative_prompt="a big yellow star", seed=0, stop_at=1, progress=False)
    assert torch.equal(a.images[0], b.images[0])


def test_build_leaves_the_global_rng_alone_and_its_weights_follow_the_seed(minilm):
    from openimagen.config import to_dict
    from openimagen.nn.efficient_unet import PRESETS
    from openimagen.stage import Stage, StageConfig

    torch.manual_seed(123)
    before = torch.get_rng_state()
    built = Cascade.build(minilm, [("tiny", 8), ("tiny", 16)], seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    # the same weights as stages made right after torch.manual_seed(seed) (how build drew them before)
    torch.manual_seed(7)
    ref = [Stage(StageConfig(resolution=r, unet=PRESETS["tiny"](text_embed_dim=minilm.dim, lowres_cond=i > 0),
                             lowres=i > 0)) for i, r in enumerate((8, 16))]
    got = dict(built.stages.named_parameters())
    want = dict(torch.nn.ModuleList(ref).named_parameters())
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    other = Cascade.build(minilm, [("tiny", 8), ("tiny", 16)], seed=8)
    assert not all(torch.equal(p, q) for p, q in zip(built.parameters(), other.parameters()))
