"""Named training recipes: small factories returning a `TrainConfig`.

    shapes-tiny    16 px base + 16 -> 32 px SR, ~0.1M-parameter U-Nets: the smoke test / overfit
                   sanity recipe (50 steps per stage in seconds on a laptop CPU)
    shapes-small   32 px base + 32 -> 64 px SR on the shapes world: the cascade we ship; about an
                   hour on 2 CPU cores with native bf16 autocast (see `shapes_small`'s docstring); scale
                   it with `--set stages.0.steps=...` or `--set optim.lr=...`
    shapes-128     three stages, 32 px base + 32 -> 64 + 64 -> 128 px, on natural phrasings and random
                   sign words, with a spelled text encoder: the successor of shapes-small (fp32, sized
                   for 3 CPU-hours; see `shapes_128`'s docstring)

Every knob is a field of the dataclasses in train/config.py, so any of them can be overridden from a
TOML/YAML file or the command line; the U-Net shapes come from `nn.efficient_unet.PRESETS`.
"""
from __future__ import annotations

from typing import Callable

from ..diffusion import Parameterization, ScheduleConfig
from ..nn.efficient_unet import PRESETS, EfficientUNetConfig
from ..nn.layout import TextLayoutConfig
from ..nn.spelling import SpellingConfig
from ..stage import StageConfig
from ..text import MiniLMEncoderConfig, SpelledEncoderConfig
from .config import DataConfig, OptimConfig, StageTrainConfig, TrainConfig

MINILM = MiniLMEncoderConfig(max_length=32)
SHAPES_PROMPTS = (
    "a red circle on a gray background",
    "a blue square above a yellow star",
    "three green triangles",
    'a sign that says "CAT"',
)


def _unet(preset: str, **overrides) -> EfficientUNetConfig:
    return PRESETS[preset](**overrides)


def _stage(resolution: int, unet: EfficientUNetConfig, lowres: bool, logsnr_shift: float = 0.0, **kw) -> StageConfig:
    # v-prediction on Imagen's cosine schedule: well conditioned at both ends of t, which matters
    # for small networks; the low-res augmentation uses the linear schedule (Imagen's default).
    sampling = dict(  # the sampling defaults; a preset whose model chose its own passes them in kw
        noise_level=0.12 if lowres else 0.0,  # why 0.12: docs/decisions.md#sr-noise-augmentation
        sampler="dpmpp_2m",
        steps=25,
        guidance=1.0 if lowres else 2.0,  # why 2 and 1: docs/decisions.md#sampling-guidance
    )
    return StageConfig(
        resolution=resolution,
        unet=unet,
        schedule=ScheduleConfig(kind="cosine", logsnr_shift=logsnr_shift),
        parameterization=Parameterization(kind="v"),
        lowres=lowres,
        lowres_schedule=ScheduleConfig(kind="linear"),
        threshold="dynamic",
        **{**sampling, **kw},
    )


def _shapes_run(**kw) -> TrainConfig:
    """The training knobs the shapes-world recipes share (shapes-small, shapes-128); kw: what differs."""
    return TrainConfig(
        optim=OptimConfig(lr=5e-4, warmup_steps=100, decay="cosine", grad_clip=1.0, weight_decay=0.0),
        mixed_precision="auto", ema_decay=0.999, caption_dropout=0.1,
        log_every=20, checkpoint_every=250, keep_checkpoints=2, sample_steps=25, **kw)


def shapes_tiny() -> TrainConfig:
    """Two ~0.1M-parameter U-Nets, 16 px then 32 px; 50 steps each. For tests and a first look."""
    base = _unet("tiny", text_embed_dim=384)
    sr = _unet("tiny", text_embed_dim=384, lowres_cond=True)
    return TrainConfig(
        text_encoder=MINILM,
        stages=(
            StageTrainConfig(stage=_stage(16, base, lowres=False), steps=50, batch_size=8, min_snr_gamma=5.0),
            StageTrainConfig(stage=_stage(32, sr, lowres=True), steps=50, batch_size=8, min_snr_gamma=5.0,
                             noise_level_max=0.5),
        ),
        data=DataConfig(kind="shapes", size=512, seed=0, holdout=True),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, grad_clip=1.0),
        mixed_precision="auto",
        ema_decay=0.99,
        caption_dropout=0.1,
        log_every=10,
        checkpoint_every=25,
        keep_checkpoints=2,
        sample_every=0,
        sample_prompts=SHAPES_PROMPTS[:2],
        sample_steps=10,
    )


# Text-layout warm-up steps of the shapes-small base (train only nn/layout.py's decoder, ~0.06 s each
# with two processes); why 3000: docs/decisions.md#text-layout-plateau
LAYOUT_WARMUP = 3_000


def shapes_small() -> TrainConfig:
    """32 px base (3.5M params) + 32 -> 64 px SR (2.1M params) on 20k shapes scenes, precision auto
    (bf16 autocast where the CPU has AVX512-BF16 / AMX, fp32 where bf16 would be emulated: precision.py).

    The base follows layout words ("on the left", "above") because its noise schedule is the cosine one
    shifted by -3 in log-SNR and its loss is plain v-MSE (no Min-SNR weights); it binds attributes to
    objects ("a red circle above a blue square": red up, blue down) through its text layout (nn/layout.py,
    an 8 x 8 extra of its U-Net), trained alone for LAYOUT_WARMUP cheap steps, then alongside the diffusion loss.
    Why, with the measurements: docs/decisions.md#logsnr-shift, #text-layout, #text-layout-plateau.

    The SR stage trains on random 32 px crops of the 64 px image (with the matching 16 px low-res
    crop), as Imagen trains its SR stages: a quarter of the cost, and the network is fully
    convolutional so it samples whole 64 px images. Its noise augmentation is drawn from [0, 0.3]
    (sampling uses 0.12: docs/decisions.md#sr-noise-augmentation).

    Budget: about an hour of wall time on 2 CPU cores as two data-parallel processes on a CPU with native
    bf16 (README, "The bundled model", has the command and the measured cost: 1.93 CPU-hours); ~0.6 s per
    base step and ~0.2 s per SR step in one single-threaded process there. On an AVX2-only CPU, where auto
    trains in fp32, a base step costs 2.0-2.3 CPU-s (measured 2026-12-02, one thread, the other core busy),
    so the same recipe needs ~4 CPU-hours for the base alone: over issue 16's 3 CPU-hour budget there.
    """
    base = _unet("shapes-base", extras=(TextLayoutConfig(grid=8, layers=2),))
    sr = _unet("shapes-sr")
    return _shapes_run(
        text_encoder=MINILM,
        stages=(
            # 10 sampling steps on the base: as faithful as 25 on random scenes (docs/decisions.md#base-steps)
            StageTrainConfig(stage=_stage(32, base, lowres=False, logsnr_shift=-3.0, steps=10),
                             steps=LAYOUT_WARMUP + 6000, batch_size=16, min_snr_gamma=None, extras_warmup=LAYOUT_WARMUP),
            StageTrainConfig(stage=_stage(64, sr, lowres=True), steps=8000, batch_size=16, min_snr_gamma=5.0,
                             noise_level_max=0.3, crop=32),
        ),
        data=DataConfig(kind="shapes", size=20_000, seed=0, holdout=True),
        sample_every=2000,
        sample_prompts=SHAPES_PROMPTS,
    )


# Letters spelled per prompt (spelling.py): the longest sign word is 5 letters; 8 leaves room
SPELL_CHARS = 8
SHAPES_128_PROMPTS = SHAPES_PROMPTS + ('a sign that says "ZAP"', "a red triangle and a blue circle")


def shapes_128() -> TrainConfig:
    """Three stages, Imagen's shape: 32 px base + 32 -> 64 px SR + 64 -> 128 px SR, ~7.5M parameters (30 MB fp32).

    What changes from shapes-small, and why (issue 16; docs/decisions.md#character-encoding):
      data     phrasing="natural" (data/shapes_phrasings.py: attributes left out, synonyms, digits, other
               word orders, "and" scenes, sentence case) and half the signs a random 3-5 letter word
      text     SpelledEncoderConfig: MiniLM's tokens after 8 one-hot letter tokens of the quoted word
      base     the same U-Net and text layout, plus a spelling extra (nn/spelling.py, a 16 x 16 letter map
               at 32 px: a sign's letters are ~6 px apart, two cells)
      stage 3  `shapes-sr128` (1.6M params) on 32 px crops of the 128 px image, like stage 2 on 64 px
      auto     precision as every preset (precision.py): fp32 on this machine's CPU (AVX2, no AVX512-BF16
               emulates bf16 ~90x slower), bf16 where the CPU or GPU has it natively
    Steps are sized for 3 CPU-hours (`/usr/bin/time` user + system) from the fp32 CPU time per step of
    16 measured in one single-threaded process on the 2-core development machine: base 2.15 s (layout
    warm-up steps ~0.25 s), SR 64 0.45 s, SR 128 0.45 s; so 3000 warm-up + 2800 base steps ~6.8k s,
    3200 + 3200 SR steps ~2.9k s, and ~0.6k s for rendering and embedding the 20k scenes and sampling:
    ~10.3k s in all. Fewer base steps than shapes-small (6000, bf16 on a CPU with native bf16): the
    price of fp32 on this machine.
    Measured (`/usr/bin/time`, README "The three-stage model"): trained as two single-threaded runs side by
    side, `--train-stages 0` 6143 CPU-s (warm-up 0.18 s a step, then 1.99 s) and `--train-stages 1,2` 3120 CPU-s
    (0.55 and 0.39 s a step): 9263 CPU-s, 2.57 CPU-hours, 111 min of wall time.
    """
    base = _unet("shapes-base", extras=(TextLayoutConfig(grid=8, layers=2),
                                        SpellingConfig(max_chars=SPELL_CHARS, grid=16, width=64, layers=2)))
    sr64, sr128 = _unet("shapes-sr"), _unet("shapes-sr128")
    return _shapes_run(
        text_encoder=SpelledEncoderConfig(MINILM, max_chars=SPELL_CHARS),
        stages=(
            StageTrainConfig(stage=_stage(32, base, lowres=False, logsnr_shift=-3.0), steps=LAYOUT_WARMUP + 2800,
                             batch_size=16, min_snr_gamma=None, extras_warmup=LAYOUT_WARMUP),
            StageTrainConfig(stage=_stage(64, sr64, lowres=True), steps=3200, batch_size=16, min_snr_gamma=5.0,
                             noise_level_max=0.3, crop=32),
            StageTrainConfig(stage=_stage(128, sr128, lowres=True), steps=3200, batch_size=16, min_snr_gamma=5.0,
                             noise_level_max=0.3, crop=32),
        ),
        data=DataConfig(kind="shapes", size=20_000, seed=0, holdout=True, phrasing="natural"),
        sample_every=0,   # one grid at the end: a grid of three stages costs ~1 CPU-minute
        sample_prompts=SHAPES_128_PROMPTS,
    )


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "shapes-tiny": shapes_tiny,
    "shapes-small": shapes_small,
    "shapes-128": shapes_128,
}
