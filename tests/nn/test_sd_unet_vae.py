"""The SD x4 upscaler's U-Net and VAE against diffusers' own modules (the oracle).

Real sizes are built on the meta device from the hub configs (stage3_and_editing.md §1.2): the parameter
counts, key sets and shapes must equal diffusers'. Tiny configs (diffusers' test components, §1.8) check
the forward passes with the same weights, odd sizes included.
"""
import pytest
import torch

from openimagen.nn.sd_unet import SDConfigError, SDUNet, SDUNetConfig
from openimagen.nn.vae import AutoencoderKL, VAEConfig, upgrade_legacy_keys

diffusers = pytest.importorskip("diffusers")

X4_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[256, 512, 512, 1024], center_input_sample=False,
    cross_attention_dim=1024, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                 "CrossAttnDownBlock2D"],
    downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=7,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, num_class_embeds=1000,
    only_cross_attention=[True, True, True, False], out_channels=4, sample_size=128,
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True)
X4_VAE = dict(act_fn="silu", block_out_channels=[128, 256, 512], down_block_types=["DownEncoderBlock2D"] * 3,
              in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
              sample_size=256, up_block_types=["UpDecoderBlock2D"] * 3, scaling_factor=0.08333)
TINY_UNET = dict(block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=32, in_channels=7, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                 attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
                 num_class_embeds=100)
TINY_VAE = dict(block_out_channels=[32, 32, 64], in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4)


def _shapes(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_real_size_unet_and_vae_match_diffusers_on_meta():
    with torch.device("meta"):
        ours_u, ref_u = SDUNet(SDUNetConfig.from_diffusers_config(X4_UNET)), diffusers.UNet2DConditionModel(**X4_UNET)
        ours_v = AutoencoderKL(VAEConfig.from_diffusers_config(X4_VAE))
        ref_v = diffusers.AutoencoderKL(**{k: v for k, v in X4_VAE.items()})
    assert _count(ours_u) == _count(ref_u) == 473_398_020
    assert _count(ours_v) == _count(ref_v) == 55_325_927
    assert _shapes(ours_u) == _shapes(ref_u) and len(_shapes(ours_u)) == 687
    assert _shapes(ours_v) == _shapes(ref_v) and len(_shapes(ours_v)) == 204


@pytest.mark.parametrize("linear", [True, False])
def test_tiny_unet_forward_equals_diffusers(linear):
    kw = dict(TINY_UNET, use_linear_projection=linear)
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**kw).eval()
    ours = SDUNet(SDUNetConfig.from_diffusers_config(dict(ref.config)))
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 17, 13, generator=g)            # odd sizes: upsamplers follow the skips
    ctx = torch.randn(2, 77, 32, generator=g)
    t, labels = torch.tensor([500, 3]), torch.tensor([20, 99])
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx, class_labels=labels).sample
        got = ours(x[:, :4], t.float(), ctx, lowres=x[:, 4:], noise_level=labels.float())
    assert got.shape == want.shape == (2, 4, 17, 13)
    assert (got - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("legacy", [False, True])
def test_tiny_vae_decode_and_encode_equal_diffusers(legacy):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**TINY_VAE).eval()
    state = ref.state_dict()
    if legacy:  # the pre-2023 spelling of the attention keys, as in the x4 upscaler's hub file
        new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        state = {next((k.replace(f".{n}.", f".{o}.") for n, o in new_to_old.items() if f"attentions.0.{n}." in k), k): v
                 for k, v in state.items()}
        assert any(".query." in k for k in state)
        state = upgrade_legacy_keys(state)
    ours = AutoencoderKL(VAEConfig.from_diffusers_config(dict(ref.config)))
    ours.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 9, 6, generator=g)
    img = torch.rand(1, 3, 36, 24, generator=g) * 2 - 1
    with torch.no_grad():
        assert (ours.decode(z) - ref.decode(z).sample).abs().max().item() < 1e-5
        mean, _ = ours.encode(img)
        assert (mean - ref.encode(img).latent_dist.mean).abs().max().item() < 1e-5


def test_unsupported_unet_config_is_refused_by_name():
    with pytest.raises(SDConfigError, match="upcast_attention"):
        SDUNetConfig.from_diffusers_config(dict(X4_UNET, upcast_attention=True))
    with pytest.raises(SDConfigError, match="SimpleCrossAttnDownBlock2D"):
        SDUNetConfig.from_diffusers_config(dict(X4_UNET, down_block_types=["SimpleCrossAttnDownBlock2D"] * 4))
