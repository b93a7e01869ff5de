"""A tiny Stable Diffusion x4 upscaler written by diffusers itself (the oracle), with no download.

The U-Net, VAE, CLIP text encoder and schedulers are diffusers' own upscale-pipeline test components
(stage3_and_editing.md §1.8: linear betas, a clip_sample DDIM with v-prediction). The tokenizer is built
here (the test's hf-internal-testing/tiny-random-clip is on the hub): a character-level CLIP BPE whose pad
token is "!" (id 0), as the real upscaler's special_tokens_map.json makes it.
"""
from __future__ import annotations

from pathlib import Path

import torch

UNET = dict(block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=32, in_channels=7, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
            num_class_embeds=100)
VAE = dict(block_out_channels=[32, 32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
           up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4)


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 bytes ("!" first, so it gets id 0)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77)


def tiny_clip(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5,
                                        pad_token_id=1, vocab_size=1000, hidden_act="gelu",
                                        projection_dim=512)).eval()


def x4_pipeline(num_class_embeds: int = 100):
    """diffusers' test components; `num_class_embeds=1000` (the real model's) admits IF's noise level 100."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**dict(UNET, num_class_embeds=num_class_embeds)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE).eval()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=tiny_clip(), tokenizer=tiny_clip_tokenizer(), unet=unet,
        low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, watermarker=None, max_noise_level=350)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_x4(root: Path, num_class_embeds: int = 100):
    """Save the tiny upscaler with diffusers' save_pretrained; returns (pipeline, folder)."""
    pipe = x4_pipeline(num_class_embeds)
    folder = Path(root) / "x4-tiny"
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, folder
