"""Named training recipes: small factories returning a `TrainConfig`.

    shapes-tiny    16 px base + 16 -> 32 px SR, ~0.1M-parameter U-Nets: the smoke test / overfit
                   sanity recipe (50 steps per stage in seconds on a laptop CPU)
    shapes-small   32 px base + 32 -> 64 px SR on the shapes world: the cascade we ship; about an
                   hour on 2 CPU cores with bf16 autocast (measured speeds in `shapes_small`'s
                   docstring); scale it with `--set stages.0.steps=...` or `--set optim.lr=...`

Every knob is a field of the dataclasses in train/config.py, so any of them can be overridden from a
TOML/YAML file or the command line; the U-Net shapes come from `nn.efficient_unet.PRESETS`.
"""
from __future__ import annotations

from typing import Callable

from ..config import to_dict
from ..diffusion import Parameterization, ScheduleConfig
from ..stage import StageConfig
from .config import DataConfig, OptimConfig, StageTrainConfig, TrainConfig

MINILM = {"kind": "minilm", "max_length": 32}
SHAPES_PROMPTS = (
    "a red circle on a gray background",
    "a blue square above a yellow star",
    "three green triangles",
    'a sign that says "CAT"',
)


def _unet(preset: str, **overrides) -> dict:
    from ..nn.efficient_unet import PRESETS

    return to_dict(PRESETS[preset](**overrides))


def _stage(resolution: int, unet: dict, lowres: bool, **kw) -> StageConfig:
    # v-prediction on Imagen's cosine schedule: well conditioned at both ends of t, which matters
    # for small networks; the low-res augmentation uses the linear schedule (Imagen's default).
    return StageConfig(
        resolution=resolution,
        unet=unet,
        schedule=ScheduleConfig(kind="cosine"),
        parameterization=Parameterization(kind="v"),
        lowres=lowres,
        lowres_schedule=ScheduleConfig(kind="linear"),
        lowres_aug=0.08 if lowres else 0.0,  # measured: 0.2 blurred shapes away in the small SR stage
        sampler="dpmpp_2m",
        steps=25,
        guidance=5.0,
        threshold="dynamic",
        **kw,
    )


def shapes_tiny() -> TrainConfig:
    """Two ~0.1M-parameter U-Nets, 16 px then 32 px; 50 steps each. For tests and a first look."""
    base = _unet("tiny", text_embed_dim=384)
    sr = _unet("tiny", text_embed_dim=384, lowres_cond=True)
    return TrainConfig(
        text_encoder=dict(MINILM),
        stages=(
            StageTrainConfig(stage=_stage(16, base, lowres=False), steps=50, batch_size=8, min_snr_gamma=5.0),
            StageTrainConfig(stage=_stage(32, sr, lowres=True), steps=50, batch_size=8, min_snr_gamma=5.0,
                             lowres_aug_max=0.5),
        ),
        data=DataConfig(kind="shapes", size=512, seed=0, holdout=True),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, grad_clip=1.0),
        mixed_precision="no",
        ema_decay=0.99,
        caption_dropout=0.1,
        log_every=10,
        checkpoint_every=25,
        keep_checkpoints=2,
        sample_every=0,
        sample_prompts=SHAPES_PROMPTS[:2],
        sample_steps=10,
    )


def shapes_small() -> TrainConfig:
    """32 px base (3.4M params) + 32 -> 64 px SR (2.1M params) on 20k shapes scenes, bf16 autocast.

    Budget: about an hour on 2 CPU cores. Measured on the shared 2-core dev machine with bf16
    (fwd + bwd + AdamW, 2 threads, busy machine so numbers are upper bounds on time):
      base 32 px, batch 16:              ~1.7 s/step (4.1 GFLOP/sample)
      SR 64 px on 32 px crops, batch 16: ~0.4 s/step (1.0 GFLOP/sample)
    With `--threads 1` (less stalling on a busy machine) the bundled model's run took 0.6-0.9 s/step
    for the base's 3500 steps; README, "The bundled model", gives the measured total.
    The SR stage trains on random 32 px crops of the 64 px image (with the matching 16 px
    low-res crop), as Imagen trains its SR stages: a quarter of the cost, and the network is
    fully convolutional so it samples whole 64 px images. To trade time for quality scale
    `stages.0.steps` first (the base stage decides what is drawn).
    """
    base = _unet("shapes-base")
    sr = _unet("shapes-sr")
    return TrainConfig(
        text_encoder=dict(MINILM),
        stages=(
            StageTrainConfig(stage=_stage(32, base, lowres=False), steps=3500, batch_size=16, min_snr_gamma=5.0),
            StageTrainConfig(stage=_stage(64, sr, lowres=True), steps=4500, batch_size=16, min_snr_gamma=5.0,
                             lowres_aug_max=0.5, crop=32),
        ),
        data=DataConfig(kind="shapes", size=20_000, seed=0, holdout=True),
        optim=OptimConfig(lr=5e-4, warmup_steps=100, decay="cosine", grad_clip=1.0, weight_decay=0.0),
        mixed_precision="bf16",
        ema_decay=0.999,
        caption_dropout=0.1,
        log_every=20,
        checkpoint_every=250,
        keep_checkpoints=2,
        sample_every=500,
        sample_prompts=SHAPES_PROMPTS,
        sample_steps=25,
    )


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "shapes-tiny": shapes_tiny,
    "shapes-small": shapes_small,
}
