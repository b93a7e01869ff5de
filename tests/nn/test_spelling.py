"""The spelling extra (nn/spelling.py) and the letter tokens in front of the text (spelling.py)."""
import pytest
import torch

from openimagen.config import from_dict, to_dict
from openimagen.nn import PRESETS, EfficientUNet, UNetConfig
from openimagen.nn.spelling import SpellingConfig
from openimagen.spelling import SpelledEncoder, letter_tokens, quoted_word
from openimagen.text import SpelledEncoderConfig, TextEncoderConfig, MiniLMEncoderConfig, text_encoder_config

torch.set_num_threads(1)
K, D = 6, 32
SPELL = SpellingConfig(max_chars=K, grid=4, width=16, layers=1, head_dim=8)


def test_quoted_word_finds_the_word_people_write():
    assert quoted_word('a sign that says "zap"') == "ZAP"
    assert quoted_word("A sign saying QUIX, gray background") == "QUIX"
    assert quoted_word("the word MOON on a sign") == "MOON"
    assert quoted_word("On a beige background, a sign that reads FLOB") == "FLOB"
    assert quoted_word("a red circle on the left") == ""
    tokens, mask = letter_tokens(["says AB", "a red circle"], 3, D)
    assert mask.tolist() == [[True, True, False], [False, False, False]]
    assert tokens[0, 0, 1] == 1 and tokens[0, 1, 2] == 1 and tokens.sum() == 2   # A -> channel 1, B -> 2


class _Fake:
    """A base encoder of width D: one token per word, its embedding the word's hash."""
    dim, max_length = D, 12

    def encode(self, prompts):
        L = max(len(p.split()) for p in prompts)
        e, m = torch.zeros(len(prompts), L, D), torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, p in enumerate(prompts):
            for j, w in enumerate(p.split()):
                e[i, j] = torch.randn(D, generator=torch.Generator().manual_seed(hash(w) % 2**31))
                m[i, j] = True
        return e, m

    def spec(self):
        return to_dict(MiniLMEncoderConfig())


def _unets():
    torch.manual_seed(0)
    plain = EfficientUNet(PRESETS["tiny"]()).eval()
    spelled = EfficientUNet(PRESETS["tiny"](extras=(SPELL,))).eval()
    missing, unexpected = spelled.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("spelling") for k in missing)
    return plain, spelled


def _inputs(prompts):
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(prompts), 3, 16, 16, generator=g), torch.rand(len(prompts), generator=g) * 1000


def test_fresh_spelling_is_the_identity():
    prompts = ['a sign that says "ZAP"', "a red circle"]
    enc = SpelledEncoder(_Fake(), K)
    (e, m), (be, bm) = enc.encode(prompts), _Fake().encode(prompts)
    assert e.shape == (2, K + be.shape[1], D) and torch.equal(e[:, K:], be) and torch.equal(m[:, K:], bm)
    plain, spelled = _unets()
    x, t = _inputs(prompts)
    with torch.no_grad():
        assert torch.equal(spelled(x, t, e, m), plain(x, t, be, bm))


def _trained_like(model):
    with torch.no_grad():   # the zero-initialised injections get weights, so the letters matter
        for name, p in model.named_parameters():
            if name.startswith("spelling_") or not p.any():
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def test_letters_matter_and_padding_is_invisible():
    _, spelled = _unets()
    model = _trained_like(spelled)
    enc = SpelledEncoder(_Fake(), K)
    x, t = _inputs(["a"] * 2)
    e, m = enc.encode(['a sign that says "ZAP"', 'a sign that says "ZIP"'])
    with torch.no_grad():
        out = model(x, t, e, m)
        assert not torch.allclose(out[0], out[1])              # one letter apart: different images
        junk = e.clone()
        junk[:, 3:K] = torch.randn_like(junk[:, 3:K])         # slots after the 3 letters are masked
        assert torch.allclose(model(x, t, junk, m), out, atol=1e-6)
        longer = torch.cat([e, torch.randn(2, 4, D)], dim=1)   # more (masked) base padding at the end
        mask = torch.cat([m, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
        assert torch.allclose(model(x, t, longer, mask), out, atol=1e-5)


def test_config_and_weights_round_trip(tmp_path):
    from openimagen.io.model_folder import load, save
    from openimagen.stage import Stage, StageConfig

    cfg = PRESETS["tiny"](extras=(SPELL,))
    assert from_dict(UNetConfig, to_dict(cfg)) == cfg
    assert to_dict(cfg)["extras"][0] == {"kind": "spelling", "max_chars": K, "grid": 4, "width": 16, "layers": 1,
                                         "head_dim": 8}
    spec = SpelledEncoderConfig(MiniLMEncoderConfig(max_length=16), max_chars=K)
    assert text_encoder_config(to_dict(spec)) == spec and isinstance(spec, TextEncoderConfig)
    stage = Stage(StageConfig(resolution=16, unet=cfg))
    _trained_like(stage.unet).eval()
    save(tmp_path, None, [stage])
    _, (back,) = load(tmp_path)
    prompts = ['says "QUIX"']
    e, m = SpelledEncoder(_Fake(), K).encode(prompts)
    x, t = _inputs(prompts)
    assert back.config == stage.config
    assert all(torch.equal(v, back.unet.state_dict()[k]) for k, v in stage.unet.state_dict().items())
    with torch.no_grad():   # same weights; kernels may differ in the last bits (memory-mapped tensors)
        assert torch.allclose(back.unet(x, t, e, m), stage.unet(x, t, e, m), atol=1e-5)


def test_bad_spelling_settings_are_clear_errors():
    with pytest.raises(ValueError, match="max_chars"):
        SpellingConfig(max_chars=0)
    with pytest.raises(ValueError, match="width"):
        SpellingConfig(width=18)
    with pytest.raises(ValueError, match="max_chars"):
        SpelledEncoderConfig(max_chars=0)
    _, spelled = _unets()
    x, t = _inputs(["a"])
    with pytest.raises(ValueError, match="SpelledEncoderConfig"):
        spelled(x, t, torch.randn(1, K, D), torch.ones(1, K, dtype=torch.bool))


def test_a_spelling_extra_needs_a_spelled_encoder_of_its_length():
    import dataclasses

    from openimagen.config import ConfigError
    from openimagen.train.presets import shapes_128

    cfg = shapes_128()
    assert cfg.text_encoder.max_chars == cfg.stages[0].stage.extras[1].max_chars
    with pytest.raises(ConfigError, match="spelled"):
        dataclasses.replace(cfg, text_encoder=MiniLMEncoderConfig(max_length=32))
    with pytest.raises(ConfigError, match="max_chars=8"):
        dataclasses.replace(cfg, text_encoder=SpelledEncoderConfig(max_chars=5))
