"""Tiny DeepFloyd IF checkpoints written by diffusers itself (the oracle), with no download.

The components are the shapes of diffusers' own IF pipeline tests (docs/reference/deepfloyd_if.md §1.5),
except the text side: a random 2-layer T5 encoder (d_model 32) and a word-level unigram tokenizer built
here from a hand-written vocabulary, so nothing is fetched from the hub.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

IF_UNET_COMMON = dict(
    act_fn="gelu", resnet_time_scale_shift="scale_shift", addition_embed_type="text",
    cross_attention_norm="group_norm", mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
    up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    block_out_channels=[32, 64], out_channels=6, cross_attention_dim=32, encoder_hid_dim=32,
    attention_head_dim=8, addition_embed_type_num_heads=2,
)
STAGE_I_UNET = dict(IF_UNET_COMMON, sample_size=16, layers_per_block=1, in_channels=3)
STAGE_II_UNET = dict(IF_UNET_COMMON, sample_size=32, layers_per_block=[1, 2], in_channels=6,
                     class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
                     time_embedding_dim=32)
WORDS = ("a painting of squirrel eating burger anime turtle red blue green cube sphere above photo cat hat the "
         "in on with and small big").split()


def tiny_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -5.0) for c in string.ascii_lowercase + string.digits + ".,!?'-"]
    vocab += [("\u2581" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5(vocab_size: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    return T5EncoderModel(cfg).eval()


def if_scheduler(sample_max_value: float):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001,
                         beta_end=0.02, thresholding=True, dynamic_thresholding_ratio=0.95,
                         sample_max_value=sample_max_value, prediction_type="epsilon",
                         variance_type="learned_range")


def _unet(kw: dict, seed: int):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    # diffusers' own init (no zero-initialised layers in this model). Larger random weights make the
    # sampler chaotic: 1e-6 of float32 noise then grows to 1e-2 in ten guided steps, in diffusers alone.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**kw).eval()
    unet.set_attn_processor(AttnAddedKVProcessor())
    return unet


def stage_i_pipeline():
    from diffusers import IFPipeline

    tok = tiny_tokenizer()
    return IFPipeline(tokenizer=tok, text_encoder=tiny_t5(len(tok)), unet=_unet(STAGE_I_UNET, 1),
                      scheduler=if_scheduler(1.5), safety_checker=None, feature_extractor=None,
                      watermarker=None, requires_safety_checker=False)


def stage_ii_pipeline(with_text_encoder: bool = False):
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline

    tok = tiny_tokenizer()
    return IFSuperResolutionPipeline(
        tokenizer=tok if with_text_encoder else None,
        text_encoder=tiny_t5(len(tok)) if with_text_encoder else None,
        unet=_unet(STAGE_II_UNET, 2), scheduler=if_scheduler(1.0),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                              beta_start=0.0001, beta_end=0.02),
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)


def write_checkpoints(root: Path):
    """Save both tiny pipelines with diffusers' save_pretrained; returns (pipe_I, pipe_II, dir_I, dir_II)."""
    p1, p2 = stage_i_pipeline(), stage_ii_pipeline()
    d1, d2 = Path(root) / "IF-I-tiny", Path(root) / "IF-II-tiny"
    p1.save_pretrained(d1, safe_serialization=True)
    p2.save_pretrained(d2, safe_serialization=True)
    for p in (p1, p2):
        p.set_progress_bar_config(disable=True)
    return p1, p2, d1, d2
