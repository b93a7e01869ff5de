"""IFUNet against diffusers' UNet2DConditionModel: same keys, same outputs, clear errors.

diffusers is the oracle here only (tests may import it; src/ never does).
"""
import json

import pytest
import torch

from openimagen.checkpoints.deepfloyd_if import IFCheckpointError, load_if_unet
from openimagen.nn.if_unet import IFConfigError, IFUNet, IFUNetConfig, if_stage

diffusers = pytest.importorskip("diffusers")

# ----------------------------------------------------------------------------- configs

IF_COMMON = dict(act_fn="gelu", resnet_time_scale_shift="scale_shift", addition_embed_type="text",
                 cross_attention_norm="group_norm", mid_block_type="UNetMidBlock2DSimpleCrossAttn")

# diffusers' tests/pipelines/deepfloyd_if: the IFPipeline dummy (reference §1.5)
DUMMY_I = dict(IF_COMMON, sample_size=32, layers_per_block=1, block_out_channels=[32, 64],
               down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
               up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=3, out_channels=6,
               cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type_num_heads=2)
# ... and the super-resolution dummy
DUMMY_SR = dict(DUMMY_I, layers_per_block=[1, 2], in_channels=6, class_embed_type="timestep",
                mid_block_scale_factor=1.414, time_embedding_act_fn="gelu", time_embedding_dim=32)
# II-L's features at tiny size: 3 levels, per-level depth, efficient activation, scaled skips; also
# norm_num_groups/norm_eps away from the defaults (attention norms must keep eps 1e-5 and norm_cross 32 groups)
SMALL_II = dict(IF_COMMON, sample_size=16, block_out_channels=[16, 32, 48], layers_per_block=[1, 2, 2],
                down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
                up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
                in_channels=6, out_channels=6, class_embed_type="timestep", cross_attention_dim=32, encoder_hid_dim=24,
                attention_head_dim=16, addition_embed_type_num_heads=4, resnet_skip_time_act=True,
                resnet_out_scale_factor=1.414, mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
                time_embedding_dim=48, norm_num_groups=8, norm_eps=1e-3)
# cross-attention-only top level, no encoder_hid_proj, no norm_cross, wider heads
ONLY_CROSS = dict(IF_COMMON, sample_size=16, block_out_channels=[32, 64], layers_per_block=2,
                  down_block_types=["SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
                  up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D"], in_channels=3,
                  out_channels=6, cross_attention_dim=32, attention_head_dim=32, addition_embed_type_num_heads=4,
                  only_cross_attention=[True, False], cross_attention_norm=None)

# reference §1.1 / §1.2: the hub configs of IF-I-XL-v1.0 and IF-II-L-v1.0
IF_I_XL = dict(IF_COMMON, _class_name="UNet2DConditionModel", _diffusers_version="0.15.0.dev0",
               addition_embed_type_num_heads=64, attention_head_dim=64, block_out_channels=[704, 1408, 2112, 2816],
               layers_per_block=3, cross_attention_dim=2816, encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
               down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
               up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"], in_channels=3,
               out_channels=6, sample_size=64, class_embed_type=None, resnet_skip_time_act=False,
               resnet_out_scale_factor=1.0, mid_block_scale_factor=1, time_embedding_act_fn=None,
               time_embedding_dim=None, time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
               norm_num_groups=32, norm_eps=1e-5, upcast_attention=False, only_cross_attention=False,
               mid_block_only_cross_attention=None, use_linear_projection=False, dual_cross_attention=False,
               downsample_padding=1, conv_in_kernel=3, conv_out_kernel=3, num_attention_heads=None,
               transformer_layers_per_block=1, center_input_sample=False)
IF_II_L = dict(IF_I_XL, block_out_channels=[160, 320, 640, 960, 1280], layers_per_block=[2, 2, 3, 5, 5],
               down_block_types=["ResnetDownsampleBlock2D"] * 3 + ["SimpleCrossAttnDownBlock2D"] * 2,
               up_block_types=["SimpleCrossAttnUpBlock2D"] * 2 + ["ResnetUpsampleBlock2D"] * 3,
               class_embed_type="timestep", cross_attention_dim=1280, in_channels=6,
               mid_block_scale_factor=1.4142271248762552, resnet_out_scale_factor=1.4142271248762552,
               resnet_skip_time_act=True, sample_size=256, time_embedding_act_fn="gelu", time_embedding_dim=1280)

TINY = {"dummy_I": DUMMY_I, "dummy_SR": DUMMY_SR, "small_II": SMALL_II, "only_cross": ONLY_CROSS}


def diffusers_unet(kw: dict, seed: int = 0):
    """diffusers' U-Net with random weights, every parameter nudged so no zero init hides a bug."""
    torch.manual_seed(seed)
    kw = {k: v for k, v in kw.items() if not k.startswith("_")}
    ref = diffusers.UNet2DConditionModel(**kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref


def inputs(kw: dict, B: int = 2, H: int = 16, W: int = 16, L: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    text_dim = kw.get("encoder_hid_dim") or kw["cross_attention_dim"]
    x = torch.randn(B, kw["in_channels"], H, W, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g).float()
    text = torch.randn(B, L, text_dim, generator=g)
    level = torch.randint(0, 1000, (B,), generator=g) if kw.get("class_embed_type") else None
    return x, t, text, level


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(TINY))
def test_matches_diffusers(name, tmp_path):
    kw = TINY[name]
    ref = diffusers_unet(kw)
    ref.save_pretrained(tmp_path / "unet")
    ours = load_if_unet(tmp_path)  # a pipeline-style folder holding unet/
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    H, W = (16, 24) if name == "only_cross" else (16, 16)
    x, t, text, level = inputs(kw, B=3 if name == "only_cross" else 2, H=H, W=W)
    with torch.no_grad():
        want = ref(x, t, text, class_labels=level).sample
        got = ours(x, t, text, class_labels=level)
    assert got.shape == (x.shape[0], 6, H, W)
    assert want.std() > 0.1  # a real signal, not a vanishing one
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_sizes_of_tiny_dummies_match_reference():
    for kw, params, keys in [(DUMMY_I, 854_310, 199), (DUMMY_SR, 981_030, 257)]:
        m = IFUNet(IFUNetConfig.from_diffusers_config(kw))
        assert sum(p.numel() for p in m.parameters()) == params
        assert len(m.state_dict()) == keys


def test_scalar_times_and_the_unet_dir_itself(tmp_path):
    ref = diffusers_unet(DUMMY_SR)
    ref.save_pretrained(tmp_path)
    ours = load_if_unet(tmp_path)  # pointing at the unet/ folder directly
    x, _, text, _ = inputs(DUMMY_SR)
    with torch.no_grad():
        want = ref(x, torch.tensor([250, 250]), text, class_labels=torch.tensor([100, 100])).sample
        got = ours(x, 250, text, class_labels=torch.tensor(100))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="class_labels"):
        ours(x, 250, text)


def test_engine_signature_concatenates_lowres_and_ignores_the_mask(tmp_path):
    # Stage.model calls unet(x, t, text, mask, lowres=, noise_level=): the same numbers as diffusers' call on
    # cat([x, lowres]) with class_labels=noise_level; the text mask is ignored (IF attends to all tokens).
    ref = diffusers_unet(DUMMY_SR)
    ref.save_pretrained(tmp_path)
    ours = load_if_unet(tmp_path)
    x, t, text, level = inputs(DUMMY_SR)
    mask = torch.zeros(text.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        want = ref(x, t, text, class_labels=level).sample
        got = ours(x[:, :3], t, text, mask, lowres=x[:, 3:], noise_level=level)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="noise_level or class_labels"):
        ours(x[:, :3], t, text, lowres=x[:, 3:], noise_level=level, class_labels=level)


def test_fp16_variant_and_sharded_checkpoints(tmp_path):
    ref = diffusers_unet(DUMMY_I)
    ref.save_pretrained(tmp_path / "half", variant="fp16")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    half = load_if_unet(tmp_path / "half", dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    sharded = load_if_unet(tmp_path / "sharded")
    for k, v in ref.state_dict().items():
        assert torch.equal(sharded.state_dict()[k], v), k
        assert torch.equal(half.state_dict()[k], v.half()), k


def test_bf16_forward_close_to_fp32():
    torch.manual_seed(0)
    m = diffusers_unet(DUMMY_I)
    ours = IFUNet(IFUNetConfig.from_diffusers_config(DUMMY_I))
    ours.load_state_dict(m.state_dict())
    x, t, text, _ = inputs(DUMMY_I)
    with torch.no_grad():
        full = ours(x, t, text)
        low = ours.to(torch.bfloat16)(x.bfloat16(), t, text.bfloat16())
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max() < 0.1 * full.abs().max()


def test_odd_sizes_upsample_to_the_skip_size():
    # diffusers' resnet upsamplers double blindly and crash at 18x18 with 3 levels (18 -> 9 -> 4 -> 8 != 9)
    ours = IFUNet(IFUNetConfig.from_diffusers_config(SMALL_II))
    x, t, text, level = inputs(SMALL_II, H=18, W=18)
    with torch.no_grad():
        assert ours(x, t, text, class_labels=level).shape == (2, 6, 18, 18)


@pytest.mark.parametrize("name", ["dummy_I", "small_II"])
def test_in_place_inference_path_equals_the_autograd_path(name):
    # without autograd the resnets reuse their buffers and pick the memory layout per level
    # (if_blocks.ResnetBlock, sampling_layout); the values must not change beyond float rounding (other convolution
    # kernels), and the caller's tensors must not be written to
    kw = TINY[name]
    ours = IFUNet(IFUNetConfig.from_diffusers_config(kw))
    ours.load_state_dict(diffusers_unet(kw).state_dict())
    x, t, text, level = inputs(kw)
    x0, text0 = x.clone(), text.clone()
    with torch.no_grad():
        fast = ours(x, t, text, class_labels=level)
    slow = ours(x, t, text, class_labels=level).detach()  # grad mode: no in-place ops
    assert torch.equal(x, x0) and torch.equal(text, text0)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)


def test_attention_pooling_without_token_projections_equals_the_projected_form():
    # if_blocks.AttentionPooling._one_query folds W_k into the query and W_v after the weighted sum; an adapter-
    # wrapped (here: subclassed) projection takes the explicit path, which must give the same pooled vector
    from openimagen.nn.if_blocks import AttentionPooling

    class Wrapped(torch.nn.Linear):
        pass

    torch.manual_seed(0)
    pool = AttentionPooling(128, 8)
    x = torch.randn(3, 11, 128)
    fast = pool(x)
    for name in ("k_proj", "v_proj"):
        old = getattr(pool, name)
        new = Wrapped(128, 128)
        new.load_state_dict(old.state_dict())
        setattr(pool, name, new)
    slow = pool(x)
    assert fast.shape == (3, 128) and slow.abs().max() > 0.1
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    fast.square().sum().backward()  # the shortcut is differentiable (full fine-tunes train these weights)


def test_gradient_checkpointing_gives_the_same_gradients():
    ours = IFUNet(IFUNetConfig.from_diffusers_config(DUMMY_I))
    ours.load_state_dict(diffusers_unet(DUMMY_I).state_dict())
    x, t, text, _ = inputs(DUMMY_I)
    grads = []
    for ckpt in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = ckpt
        ours.train()(x, t, text).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------- real sizes


@pytest.mark.parametrize("kw,params,keys,stage", [(IF_I_XL, 4_304_695_110, 775, 1), (IF_II_L, 1_243_277_190, 939, 2)])
def test_real_configs_on_meta(kw, params, keys, stage):
    cfg = IFUNetConfig.from_diffusers_config(json.loads(json.dumps(kw)))  # as read from config.json
    with torch.device("meta"):
        ours = IFUNet(cfg)
        ref = diffusers.UNet2DConditionModel(**{k: v for k, v in kw.items() if not k.startswith("_")})
    assert sum(p.numel() for p in ours.parameters()) == params
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert len(shapes) == keys
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert if_stage(cfg) == stage
    assert ours.down_blocks[-1].attentions[0].heads == kw["block_out_channels"][-1] // 64


def test_stage_of_dummies_and_mixed_configs():
    assert if_stage(IFUNetConfig.from_diffusers_config(DUMMY_I)) == 1
    assert if_stage(IFUNetConfig.from_diffusers_config(DUMMY_SR)) == 2
    with pytest.raises(ValueError, match="cannot tell the stage"):
        if_stage(IFUNetConfig.from_diffusers_config(dict(DUMMY_I, class_embed_type="timestep")))


def test_config_round_trips_through_diffusers_format():
    for kw in (*TINY.values(), IF_I_XL, IF_II_L):
        cfg = IFUNetConfig.from_diffusers_config(kw)
        d = cfg.to_diffusers_config()
        assert IFUNetConfig.from_diffusers_config(json.loads(json.dumps(d))) == cfg
    d = IFUNetConfig.from_diffusers_config(SMALL_II).to_diffusers_config()
    ref = diffusers.UNet2DConditionModel(**{k: v for k, v in d.items() if not k.startswith("_")})
    assert ref.state_dict().keys() == IFUNet(IFUNetConfig.from_diffusers_config(SMALL_II)).state_dict().keys()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change,match", [
    ({"down_block_types": ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]}, "'CrossAttnDownBlock2D'.*DeepFloyd-IF"),
    ({"up_block_types": ["UpBlock2D", "ResnetUpsampleBlock2D"]}, "'UpBlock2D'.*DeepFloyd-IF"),
    ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type"),
    ({"act_fn": "silu"}, "act_fn='silu'"),
    ({"flip_sin_to_cos": False}, "flip_sin_to_cos=False"),
    ({"resnet_time_scale_shift": "default"}, "resnet_time_scale_shift='default'"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"class_embed_type": "projection"}, "class_embed_type='projection'"),
    ({"encoder_hid_dim_type": "image_proj"}, "encoder_hid_dim_type"),
    ({"attention_head_dim": [8, 16]}, "attention_head_dim"),
    ({"layers_per_block": [1, 1, 1]}, "one entry per level"),
    ({"_class_name": "UNet2DModel"}, "UNet2DConditionModel"),
])
def test_unsupported_configs_are_refused(change, match):
    with pytest.raises(IFConfigError, match=match):
        IFUNetConfig.from_diffusers_config(dict(DUMMY_I, **change))


def test_diffusers_defaults_apply_to_absent_keys():
    old = {k: v for k, v in DUMMY_I.items() if k != "act_fn"}  # diffusers' default act_fn is silu
    with pytest.raises(IFConfigError, match="act_fn='silu'"):
        IFUNetConfig.from_diffusers_config(old)
    cfg = IFUNetConfig.from_diffusers_config(dict(DUMMY_I, _diffusers_version="0.15", freq_shift=0,
                                                  use_linear_projection=True))
    assert cfg.time_dim == 128 and cfg.addition_embed_type_num_heads == 2


def test_folder_without_config(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(IFCheckpointError, match="unet/config.json"):
        load_if_unet(tmp_path)
    with pytest.raises(IFCheckpointError, match="does not exist"):
        load_if_unet(tmp_path / "nowhere")


def test_folder_without_weights(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(DUMMY_I))
    with pytest.raises(IFCheckpointError, match="no diffusion_pytorch_model.*safetensors"):
        load_if_unet(tmp_path)


def test_bin_fallback_is_read_weights_only(tmp_path):
    ref = diffusers_unet(DUMMY_I)
    ref.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    ours = load_if_unet(tmp_path)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not a zip file")
    with pytest.raises(IFCheckpointError, match="not a readable tensor file"):
        load_if_unet(tmp_path)


def test_folder_with_an_unsupported_config(tmp_path):
    d = tmp_path / "unet"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(DUMMY_I, down_block_types=["CrossAttnDownBlock2D"] * 2)))
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(IFConfigError, match="CrossAttnDownBlock2D"):
        load_if_unet(tmp_path)


def test_corrupt_and_mismatched_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    ref = diffusers_unet(DUMMY_I)
    ref.save_pretrained(tmp_path)
    f = tmp_path / "diffusion_pytorch_model.safetensors"
    good = f.read_bytes()
    f.write_bytes(b"\xff" * 64 + good[64:])
    with pytest.raises(IFCheckpointError, match="not a readable safetensors file"):
        load_if_unet(tmp_path)
    f.write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(IFCheckpointError, match="not a readable safetensors file"):
        load_if_unet(tmp_path)
    f.write_bytes(good)
    sd = load_file(f)
    sd.pop("conv_in.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv_out.weight"] = torch.zeros(6, 32, 1, 1)
    save_file(sd, f)
    with pytest.raises(IFCheckpointError, match=r"missing 1 \[conv_in.bias\].*unexpected 1 \[extra.weight\]"
                                                 r".*wrong shape 1 \[conv_out.weight"):
        load_if_unet(tmp_path)


def test_bad_forward_inputs():
    ours = IFUNet(IFUNetConfig.from_diffusers_config(DUMMY_I))
    x, t, text, _ = inputs(DUMMY_I)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ours(x[:, :2], t, text)
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        ours(x, t, text[..., :16])
    with pytest.raises(ValueError, match="scalar or a \\(2,\\) tensor"):
        ours(x, t[:1].expand(3), text)
