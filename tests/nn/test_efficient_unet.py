"""Tests for our Imagen U-Net: presets, shapes, masking, errors, config round trip, trainability."""
import json
import math

import pytest
import torch

from openimagen.config import from_dict, load_json, save_json, to_dict
from openimagen.nn import PRESETS, EfficientUNet, UNetConfig
from openimagen.nn.layers import timestep_embedding
from openimagen.nn.layout import TextLayout, TextLayoutConfig, sincos_2d

torch.set_num_threads(1)

# plausible parameter ranges for each preset (the paper: base ~2B, SR ~600M; ours are a bit leaner)
PARAM_RANGES = {
    "tiny": (1e4, 1e6),
    "base64": (1e8, 2e9),
    "sr256": (3e8, 1e9),
    "sr1024": (3e8, 1e9),
    "shapes-base": (2e6, 5e6),
    "shapes-sr": (1e6, 3e6),
    "shapes-sr128": (1e6, 3e6),
}


def _randomize_zero_params(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Zero-init output layers make a fresh U-Net output exactly 0, which would make many
    properties hold trivially; give those layers random weights."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _model(seed=0, **overrides) -> EfficientUNet:
    torch.manual_seed(seed)
    return _randomize_zero_params(EfficientUNet(PRESETS["tiny"](**overrides))).eval()


def _inputs(B=3, H=16, L=5, D=32, seed=0, sr=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, H, H, generator=g)
    t = torch.rand(B, generator=g) * 1000
    text = torch.randn(B, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, L - 2 :] = False  # padding at the end of every prompt
    kw = {}
    if sr:
        kw = {"lowres": torch.randn(B, 3, H, H, generator=g), "noise_level": torch.rand(B, generator=g) * 250}
    return x, t, text, mask, kw


# ---------------------------------------------------------------------------------------------
# presets and config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_on_meta_with_plausible_size(name):
    cfg = PRESETS[name]()
    with torch.device("meta"):
        model = EfficientUNet(cfg)
    n = model.num_params()
    print(f"\n  preset {name:12s} {n / 1e6:9.2f}M parameters")
    lo, hi = PARAM_RANGES[name]
    assert lo <= n <= hi, f"{name}: {n} parameters outside [{lo:g}, {hi:g}]"


def test_preset_overrides_and_paper_shapes():
    assert PRESETS["base64"]().text_embed_dim == 4096
    assert PRESETS["base64"](text_embed_dim=384).text_embed_dim == 384
    assert PRESETS["sr256"]().blocks_per_level == (2, 4, 8, 8)
    assert PRESETS["sr256"]().memory_efficient and PRESETS["sr256"]().lowres_cond
    sr1024 = PRESETS["sr1024"]()
    assert not any(sr1024.attn_levels) and sr1024.cross_attention == (False, False, False, True)
    assert PRESETS["tiny"](out_channels=6).out_channels == 6


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name, tmp_path):
    cfg = PRESETS[name]()
    back = from_dict(UNetConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg and isinstance(back.dim_mults, tuple) and isinstance(back.attn_levels, tuple)
    save_json(cfg, tmp_path / "config.json")
    assert from_dict(UNetConfig, load_json(tmp_path / "config.json")) == cfg


def test_config_round_trip_keeps_int_and_tuple_blocks():
    for blocks in (2, (1, 3)):
        cfg = PRESETS["tiny"](num_res_blocks=blocks, cross_attn_levels=(True, False))
        back = from_dict(UNetConfig, to_dict(cfg))
        assert back == cfg and back.num_res_blocks == blocks


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"dim_mults": (1, 2, 4)}, "attn_levels"),  # attn_levels still has 2 entries
        ({"num_res_blocks": (1, 1, 1)}, "num_res_blocks"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"dim": 20}, "num_groups"),  # 20 channels in 8 groups
        ({"attn_head_dim": 12}, "attention heads"),  # 32 channels at level 1
        ({"dim": 15, "num_groups": 1}, "even"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_config_raises_naming_the_problem(overrides, words):
    with pytest.raises(ValueError, match=words):
        PRESETS["tiny"](**overrides)


# ---------------------------------------------------------------------------------------------
# forward


def test_timestep_embedding_closed_form_and_fp32_under_autocast():
    t = torch.tensor([0.0, 1.0, 999.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = timestep_embedding(t, 16)
    assert emb.dtype == torch.float32 and emb.shape == (3, 16)
    # frequency index 0 is 1: cos(t) and sin(t); the last is 10000^(-7/8)
    torch.testing.assert_close(emb[:, 0], torch.cos(t))
    torch.testing.assert_close(emb[:, 8], torch.sin(t))
    torch.testing.assert_close(emb[:, 15], torch.sin(t * math.exp(-math.log(1e4) * 7 / 8)))


def test_fresh_model_outputs_exactly_zero():
    # zero-init final conv: a new model predicts 0 (e.g. eps = 0), a stable starting point
    torch.manual_seed(0)
    model = EfficientUNet(PRESETS["tiny"]())
    x, t, text, mask, _ = _inputs()
    assert torch.equal(model(x, t, text, mask), torch.zeros_like(x))


@pytest.mark.parametrize(
    "overrides, sr, H",
    [
        ({}, False, 16),
        ({"out_channels": 6}, False, 8),
        ({"lowres_cond": True}, True, 16),
        ({"lowres_cond": True, "memory_efficient": True, "attn_levels": (False, False),
          "cross_attn_levels": (False, True), "num_res_blocks": (1, 2)}, True, 16),
        ({"memory_efficient": True, "dim_mults": (1, 2, 2), "attn_levels": (False, True, True),
          "attn_pool_text": False, "scale_skip": False}, False, 12),
    ],
)
def test_forward_shape(overrides, sr, H):
    model = _model(**overrides)
    x, t, text, mask, kw = _inputs(H=H, sr=sr)
    out = model(x, t, text, mask, **kw)
    assert out.shape == (3, model.cfg.out_channels, H, H)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("sr", [False, True])
def test_all_false_mask_rows_give_finite_output(sr):
    overrides = {"lowres_cond": True, "attn_levels": (False, False), "cross_attn_levels": (False, True)} if sr else {}
    model = _model(**overrides)
    x, t, text, mask, kw = _inputs(sr=sr)
    mask[0] = False  # an empty prompt
    mask[2] = False
    out = model(x, t, text, mask, **kw)
    assert torch.isfinite(out).all()
    # with every token masked the text content is irrelevant: only the null token is seen
    out2 = model(x, t, torch.randn_like(text), mask, **kw)
    torch.testing.assert_close(out2[[0, 2]], out[[0, 2]])
    assert not torch.allclose(out2[1], out[1])


def test_padding_tokens_are_ignored_and_mask_none_means_all_valid():
    model = _model()
    x, t, text, mask, _ = _inputs()
    out = model(x, t, text, mask)
    noisy_pad = text.clone()
    noisy_pad[~mask] = torch.randn(int((~mask).sum()), text.shape[-1]) * 10
    torch.testing.assert_close(model(x, t, noisy_pad, mask), out)
    torch.testing.assert_close(model(x, t, text, None), model(x, t, text, torch.ones_like(mask)))
    assert not torch.allclose(model(x, t, text, None), out)


def test_lowres_and_its_time_condition_the_sr_model():
    model = _model(lowres_cond=True)
    x, t, text, mask, kw = _inputs(sr=True)
    out = model(x, t, text, mask, **kw)
    assert not torch.allclose(model(x, t, text, mask, lowres=kw["lowres"] * 0.5, noise_level=kw["noise_level"]), out)
    assert not torch.allclose(model(x, t, text, mask, lowres=kw["lowres"], noise_level=kw["noise_level"] + 100), out)
    # noise_level=None means no augmentation: time 0
    torch.testing.assert_close(
        model(x, t, text, mask, lowres=kw["lowres"]),
        model(x, t, text, mask, lowres=kw["lowres"], noise_level=torch.zeros(3)),
    )


@pytest.mark.parametrize("sr", [False, True])
def test_output_independent_of_batch_composition(sr):
    model = _model(lowres_cond=sr)
    x, t, text, mask, kw = _inputs(B=4, sr=sr)
    mask[1] = False
    mask[2, 1:] = False
    full = model(x, t, text, mask, **kw)
    for i in range(4):
        one = model(x[i : i + 1], t[i : i + 1], text[i : i + 1], mask[i : i + 1],
                    **{k: v[i : i + 1] for k, v in kw.items()})
        torch.testing.assert_close(one[0], full[i], atol=1e-5, rtol=1e-4)
    # and a change to sample 3 leaves samples 0..2 alone
    x2 = x.clone()
    x2[3] = torch.randn_like(x2[3])
    torch.testing.assert_close(model(x2, t, text, mask, **kw)[:3], full[:3], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_forward_backward():
    model = _model(lowres_cond=True).train()
    x, t, text, mask, kw = _inputs(sr=True)
    mask[0] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, text, mask, **kw)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, x, t, txt, msk: m(x, t, txt[..., :16], msk), "text_embed_dim"),
        (lambda m, x, t, txt, msk: m(x[..., :15, :15], t, txt, msk), "not divisible by 2"),
        (lambda m, x, t, txt, msk: m(x, t, txt, msk, lowres=x), "lowres_cond=False"),
        (lambda m, x, t, txt, msk: m(x, t, txt, msk, noise_level=t), "lowres_cond=False"),
        (lambda m, x, t, txt, msk: m(x, t[:2], txt, msk), "one time per image"),
        (lambda m, x, t, txt, msk: m(x, t, txt, msk[:, :3]), "text_mask"),
        (lambda m, x, t, txt, msk: m(x[:, :1], t, txt, msk), r"\(B, 3, H, W\)"),
    ],
)
def test_bad_input_raises(call, words):
    model = _model()
    x, t, text, mask, _ = _inputs()
    with pytest.raises(ValueError, match=words):
        call(model, x, t, text, mask)


def test_sr_model_without_lowres_raises():
    model = _model(lowres_cond=True)
    x, t, text, mask, _ = _inputs()
    with pytest.raises(ValueError, match="pass lowres="):
        model(x, t, text, mask)
    with pytest.raises(ValueError, match="upsample it"):
        model(x, t, text, mask, lowres=x[..., :8, :8])


# ---------------------------------------------------------------------------------------------
# trainability


def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    model = EfficientUNet(PRESETS["tiny"]())
    x, t, text, mask, _ = _inputs(B=4, H=16)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(model(x, t, text, mask), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"\n  overfit: loss {losses[0]:.3g} -> {losses[-1]:.3g}")
    assert losses[-1] < losses[0] / 10


def test_coordinate_channels_break_translation_equivariance():
    # Without coordinates a spatially constant input gives an output that is constant away from the
    # border (convolutions and FiLM are blind to location); with them it varies across the interior.
    x = torch.full((1, 3, 64, 64), 0.3)
    t, text = torch.tensor([500.0]), torch.randn(1, 4, 32)
    spreads = {}
    for coords in (False, True):
        model = _model(coord_channels=coords, attn_levels=(False, False), num_res_blocks=1)
        interior = model(x, t, text)[..., 28:36, 28:36]  # (1, C, 8, 8)
        spreads[coords] = float((interior - interior.mean(dim=(-2, -1), keepdim=True)).abs().max())
    assert spreads[False] < 1e-5 < 1e-3 < spreads[True]


@pytest.mark.parametrize("extra, prefix", [({"text_layers": 2}, "text_layers."),
                                           ({"extras": (TextLayoutConfig(grid=4),)}, "layout")])
def test_fresh_extras_are_the_identity(extra, prefix):
    # Zero-initialised output projections (text layers) and injections (text layout): a U-Net with a fresh
    # extra computes exactly what the same U-Net without it computes, so adding one to a recipe changes
    # nothing at step 0.
    torch.manual_seed(0)
    plain = _randomize_zero_params(EfficientUNet(PRESETS["tiny"]())).eval()
    torch.manual_seed(0)
    extended = EfficientUNet(PRESETS["tiny"](**extra)).eval()
    missing, unexpected = extended.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(prefix) for k in missing)
    x, t, text, mask, _ = _inputs()
    torch.testing.assert_close(extended(x, t, text, mask), plain(x, t, text, mask))


def test_text_layers_mix_tokens_and_respect_the_mask():
    model = _model(text_layers=1)   # random weights everywhere, text layers included
    x, t, text, mask, _ = _inputs()
    out = model(x, t, text, mask)
    noisy_pad = text.clone()
    noisy_pad[~mask] = torch.randn(int((~mask).sum()), text.shape[-1]) * 10
    torch.testing.assert_close(model(x, t, noisy_pad, mask), out)   # padding stays invisible
    empty = mask.clone()
    empty[1] = False
    assert torch.isfinite(model(x, t, text, empty)).all()           # an all-padding prompt stays finite
    # the layers mix tokens: the first prompt token's state (index 1, after the null) depends on the second's
    layers, null = model.text_layers, model.null_text.expand(3, 1, -1)
    tokens = torch.cat([null, model.text_norm(model.text_proj(text))], dim=1)
    changed = tokens.clone()
    changed[:, 2] += torch.randn(tokens.shape[-1])   # (a constant shift would vanish in LayerNorm)
    before, after = layers(tokens, None), layers(changed, None)
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_text_layers_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="text_layers"):
        PRESETS["tiny"](text_layers=-1)


# ---------------------------------------------------------------------------- text layout (nn/layout.py)


def test_sincos_code_tells_every_cell_apart_and_rows_from_columns():
    code = sincos_2d(4, 16)
    assert code.shape == (16, 16)
    assert torch.cdist(code, code).add(torch.eye(16)).min() > 0.1        # 16 distinct cells
    rows, cols = code[:, :8].view(4, 4, 8), code[:, 8:].view(4, 4, 8)
    assert torch.equal(rows, rows[:, :1].expand(-1, 4, -1))              # first half: the row only
    assert torch.equal(cols, cols[:1].expand(4, -1, -1))                 # second half: the column only
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 18)


def test_layout_aux_loss_paths_agree_and_respect_the_mask():
    # The forward returns one tensor; the layout's auxiliary loss scores the map that forward saw, and
    # the warm-up path (forward_extras: no U-Net pass) sees the same map.
    model = _model(extras=(TextLayoutConfig(grid=4),))
    x, t, text, mask, _ = _inputs()
    x0 = torch.rand_like(x) * 2 - 1
    out = model(x, t, text, mask)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    loss = model.aux_loss(x0)
    assert loss.ndim == 0 and loss > 0
    with pytest.raises(RuntimeError, match="first"):
        model.aux_loss(x0)                                                  # consumed: one loss per forward
    model.forward_extras(text, mask)
    torch.testing.assert_close(model.aux_loss(x0), loss)
    noisy_pad = text.clone()
    noisy_pad[~mask] = torch.randn(int((~mask).sum()), text.shape[-1]) * 10
    model.forward_extras(noisy_pad, mask)
    torch.testing.assert_close(model.aux_loss(x0), loss)                   # padding stays invisible
    torch.testing.assert_close(model(x, t, noisy_pad, mask), out)
    empty = mask.clone()
    empty[1] = False
    assert torch.isfinite(model(x, t, text, empty)).all()                   # all-padding prompt: finite
    # the map depends on the prompt, and it reaches the U-Net's output
    model.forward_extras(torch.randn_like(text), mask)
    assert not torch.allclose(model.aux_loss(x0), loss)
    with torch.no_grad():
        for p in (*model.layout_in.parameters(), *model.layout_mid.parameters()):
            p.zero_()
    assert not torch.allclose(model(x, t, text, mask), out)


def test_layout_cells_are_not_interchangeable():
    # Every cell has its own query: a uniform prompt still gives a map that varies over the grid.
    layout = TextLayout(dim=32, head_dim=16, grid=4, layers=1, image_channels=3)
    text = torch.randn(1, 1, 32).expand(2, 5, 32)
    m = layout(text, None)
    assert m.shape == (2, 32, 4, 4)
    assert (m[0] - m[0].mean((1, 2), keepdim=True)).abs().max() > 1e-3


def test_bad_layout_settings_are_clear_errors():
    with pytest.raises(ValueError, match="grid=-1"):
        TextLayoutConfig(grid=-1)
    with pytest.raises(ValueError, match="layers=0"):
        TextLayoutConfig(grid=4, layers=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        PRESETS["tiny"](extras=(TextLayoutConfig(grid=4),), cond_dim=34, attn_head_dim=17, dim=34, num_groups=2)
    with pytest.raises(ValueError, match="2 entries of kind 'layout'"):
        PRESETS["tiny"](extras=(TextLayoutConfig(grid=4), TextLayoutConfig(grid=8)))
    with pytest.raises(ValueError, match="not an extra config"):
        PRESETS["tiny"](extras=({"kind": "layout", "grid": 4},))  # a dict: from_dict decodes JSON
    x, t, text, mask, _ = _inputs()
    model = _model()
    model(x, t, text, mask)
    assert model.aux_loss(x) is None  # no extras, no auxiliary loss
