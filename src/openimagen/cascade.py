"""The cascade: a text encoder and a list of diffusion stages, run in order.

Imagen (Saharia et al. 2022, §2): a base model draws a small image from the text; each
super-resolution stage sees the text and a noise-augmented, upsampled copy of the previous image
(noise-conditioning augmentation, §2.4; Ho et al. 2021 "Cascaded Diffusion Models").

A stage (stage.py) is one U-Net with its schedule and sampling defaults; `sampling.sample_stage` runs one
stage; this file resolves the options, encodes the prompt once and runs the stages in order. Saving and
loading are our model folder format (io/model_folder.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import options
from .data.transforms import to_pil
from .diffusion import SAMPLERS, Parameterization, Step
from .diffusion.noise import RowGenerators
from .io import model_folder
from .io.model_folder import ModelFolderError  # noqa: F401 (re-exported: the error users catch)
from .prompt_expansion import check_kind as check_expansion, expand as expand_prompt
from .sampling import GenerationCancelled, StagePlan, sample_stage  # noqa: F401 (re-exported)
from .stage import Stage, StageConfig
from .text import TextEncoder, check_prompts

StageCallback = Callable[[Step], "bool | None"]  # after every step of every stage; False cancels


# ----------------------------------------------------------------------------------------------
# Cascade


@dataclass
class CascadeOutput:
    images: list[Tensor]                    # one (B, 3, H, W) tensor in [-1, 1] per stage run
    prompts: list[str]                      # one per image row, as given
    expanded: list[str] | None = None       # one per image row: what the model read (prompt_expansion.py)

    def pil(self, stage: int = -1):
        return to_pil(self.images[stage])




class Cascade(torch.nn.Module):
    def __init__(self, text_encoder: TextEncoder | None, stages: Sequence[Stage], *,
                 prompt_expansion: str | None = None):
        super().__init__()
        self.prompt_expansion = check_expansion(prompt_expansion)  # how generate rewrites prompts (None: never)
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        for i, s in enumerate(stages):
            # Stage 0 draws from text, or (an upscaler alone, e.g. the SD x4 upscaler) enlarges a given image.
            if i > 0 and not s.config.lowres:
                raise ValueError(f"stage {i} must be a super-resolution stage (lowres=True); check the order of the stages")
        self.text_encoder = text_encoder
        self.stages = torch.nn.ModuleList(stages)

    @classmethod
    def build(
        cls,
        text_encoder: TextEncoder,
        stages: Sequence[tuple[str, int]],
        *,
        seed: int = 0,
        **stage_options,
    ) -> "Cascade":
        """A fresh (untrained) cascade from U-Net preset names and resolutions.

        `Cascade.build(MiniLMEncoder(), [("tiny", 16), ("tiny", 32)])`; `stage_options` are StageConfig
        fields applied to every stage (e.g. steps=20, sampler="ddim"). The weights are drawn from the CPU
        generator seeded with `seed`; the caller's global RNG state is left as it was.
        """
        from .nn.efficient_unet import PRESETS

        built = []
        with torch.random.fork_rng(devices=[]):  # saves and restores the CPU generator's state
            torch.default_generator.manual_seed(int(seed))  # modules initialise on the CPU: no device RNG to seed
            for i, (preset, resolution) in enumerate(stages):
                if preset not in PRESETS:
                    raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(PRESETS)}")
                param = stage_options.get("parameterization", Parameterization())
                unet_cfg = PRESETS[preset](
                    text_embed_dim=text_encoder.dim, lowres_cond=i > 0, out_channels=param.out_channels(3)
                )
                config = StageConfig(resolution=resolution, unet=unet_cfg, lowres=i > 0, **stage_options)
                built.append(Stage(config))
        return cls(text_encoder, built)

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        num_images: int = 1,
        steps: int | str | Sequence | None = None,
        guidance: float | Sequence[float] | None = None,
        sampler: str | Sequence[str] | None = None,
        noise_level: float | Sequence[float] | None = None,
        height: int | Sequence[int | None] | None = None,
        width: int | Sequence[int | None] | None = None,
        image: Tensor | None = None,
        first_stage: int | None = None,
        seed: int = 0,
        stop_at: int | None = None,
        text_embeds: tuple[Tensor, Tensor] | None = None,
        autocast_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        offload: bool = False,
        progress: bool = True,
        callback: StageCallback | None = None,
        plan: Callable[[int, tuple[int, int, int, int]], StagePlan] | None = None,
        expand: bool | None = None,
    ) -> CascadeOutput:
        """Run every stage in order. Same seed, same arguments -> identical images; with num_images > 1, image j
        of every prompt draws from a generator seeded seed + j. With one prompt that is the noise of one image
        with seed + j (the same image, up to ~1e-6 of float rounding that depends on the batch size); with
        several, the rows of image j share that generator in prompt order, so from stage 1 on a row's noise
        also depends on how many prompts came with it (the whole request still replays bit for bit).

        Per-stage arguments take one value for all stages or a list with one entry per stage (None = the
        stage's default). `steps` entries are a count, a named IF list ("smart50", "fast27", ...) or an
        explicit descending timestep list. `height`/`width` given as one int size the *last* stage run
        (earlier stages keep their resolution); give lists to size each stage. `image` (B, 3, h, w) in
        [-1, 1] skips stage 0: the cascade starts by enlarging it (`first_stage=k` starts at stage k instead,
        with `image` as its low-res input; None = stage 1 with an image, stage 0 without). `device` is
        where sampling runs; with `offload=True` each model (text encoder, then each stage) sits there only
        while it runs and goes back to its own device afterwards, so a cascade bigger than the accelerator's
        memory still runs.
        `noise_level` is the low-res noise augmentation of super-resolution stages (their
        `lowres_schedule`'s units). `callback(step)` runs after every sampling step with a
        `diffusion.Step` whose `stage` is set (x_t, x, x0_hat: previews); returning False stops the run
        with `GenerationCancelled`. `plan(stage_index, shape)` -> `StagePlan(start, wrappers, after_step)`
        is where editing puts its per-stage start state, denoiser wrappers and after-step hook (editing.py).
        `expand`: rewrite each prompt in the caption style the model was trained on (prompt_expansion.py),
        image j of a prompt with seed + j; None = yes for text-to-image with a model that declares an
        expansion, no for edits (an image or a plan given) and for given text_embeds.
        """
        n = len(self.stages) if stop_at is None else stop_at
        first = _first_stage(first_stage, image, len(self.stages), self.stages[0].config.lowres)
        if not first < n <= len(self.stages):
            raise ValueError(f"stop_at={stop_at} is outside {first + 1}..{len(self.stages)}")
        prompts = check_prompts(prompts)
        if any(not p.strip() for p in prompts) and text_embeds is None:
            raise ValueError("empty prompt: give a text description of the image")
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        expanded = self._expand(prompts, expand, seed, num_images, image is None and plan is None, text_embeds)
        total = len(self.stages)
        steps = options.per_stage(steps, n, "steps", total)
        guidance = options.per_stage(guidance, n, "guidance", total)
        sampler = options.per_stage(sampler, n, "sampler", total)
        noise_level = options.per_stage(noise_level, n, "noise_level", total)
        sizes = options.stage_sizes(self.stages[:n], height, width)
        device = torch.device(device) if device is not None else next(self.parameters()).device
        timesteps = {i: options.timesteps(self.stages[i], self.stages[i].config.steps if steps[i] is None else steps[i])
                     for i in range(first, n)}
        for i in range(first, n):
            name = sampler[i] or self.stages[i].config.sampler
            if name not in SAMPLERS:
                raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")

        encoded = {}  # each prompt is encoded once per text encoder (IF: T5 for stages I-II; the x4: its CLIP)
        texts, negatives, reps = prompts, negative_prompt, num_images
        if expanded is not None:  # one text per image row: encode them all, repeat nothing
            texts, reps = expanded, 1
            if negative_prompt is not None:
                negatives = [n for n in check_prompts(negative_prompt) for _ in range(num_images)]
        rep = lambda t: t.repeat_interleave(reps, dim=0)

        def text_for(stage):
            enc = stage.text_encoder or self.text_encoder
            if id(enc) not in encoded:
                given = text_embeds if enc is self.text_encoder else None
                encoded[id(enc)] = tuple(map(rep, self._encode(texts, negatives, given, device, offload, enc)))
            return encoded[id(enc)]

        text_for(self.stages[first])  # a bad prompt or missing encoder fails before any sampling
        # Image j of every prompt draws from seed + j, so the image of one prompt is reproducible alone (--seed S+j).
        generator = (torch.Generator("cpu").manual_seed(seed) if num_images == 1
                     else RowGenerators.per_image(seed, len(prompts), num_images))
        B = len(prompts) * num_images
        prev = None if image is None else options.check_image(image, len(prompts), B).to(device)

        steps_plan = (lambda i, shape: {}) if plan is None else (lambda i, shape: plan(i, shape).as_kwargs())
        images: list[Tensor] = []
        for i in range(first, n):
            stage: Stage = self.stages[i]
            ts = timesteps[i].to(device)
            h, w = _size(stage, i, i == n - 1, sizes[i], prev, height, width)
            shape = stage.sample_shape(B, h, w)
            cond_e, cond_m, unc_e, unc_m = text_for(stage)
            bar = _progress(len(ts), f"stage {i} ({h}x{w}px)", progress)

            def report(step, i=i, bar=bar):
                if bar.total != step.num_steps:  # img2img runs only the last part of the schedule
                    bar.total = step.num_steps
                    bar.refresh()
                bar.update(1)
                return None if callback is None else callback(dataclasses.replace(step, stage=i))

            with _placed(stage, device, offload):
                try:
                    x = sample_stage(
                        stage,
                        {"text_embeds": cond_e.to(device), "text_mask": cond_m.to(device)},
                        {"text_embeds": unc_e.to(device), "text_mask": unc_m.to(device)},
                        shape, ts, generator=generator, sampler=sampler[i], guidance=guidance[i],
                        lowres=prev, noise_level=noise_level[i], callback=report,
                        autocast_dtype=autocast_dtype, stage_index=i, **steps_plan(i, shape),
                    )
                    x = stage.finish(x)  # a latent stage decodes its latents here
                finally:
                    bar.close()
            prev = x.clamp(-1, 1)
            images.append(prev)
        return CascadeOutput(images=images, prompts=[p for p in prompts for _ in range(num_images)], expanded=expanded)

    def _expand(self, prompts, expand, seed, num_images, text_to_image, text_embeds) -> list[str] | None:
        """The expanded prompt of every image row, or None when generate does not expand."""
        if expand is None:
            expand = self.prompt_expansion is not None and text_to_image and text_embeds is None
        if not expand:
            return None
        if self.prompt_expansion is None:
            raise ValueError("expand=True, but this model declares no prompt expansion (its cascade.json has no "
                             "\"prompt_expansion\"): give expand=False, or None for the model's default")
        if text_embeds is not None:
            raise ValueError("expand=True rewrites prompts before encoding them, so it cannot use given text_embeds")
        return [expand_prompt(self.prompt_expansion, p, seed + j) for p in prompts for j in range(num_images)]

    def _encode(self, prompts, negative_prompt, text_embeds, device=None, offload=False, encoder=None):
        encoder = encoder or self.text_encoder
        if encoder is None:
            what = "for the unconditional branch" if text_embeds is not None else ": pass text_embeds=(embeds, mask)"
            raise ValueError(f"this cascade has no text encoder{what}")
        negs = [""] * len(prompts) if negative_prompt is None else check_prompts(negative_prompt)
        if len(negs) == 1 and len(prompts) > 1:
            negs = negs * len(prompts)
        if len(negs) != len(prompts):
            raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts; give one or one each")
        with _placed(encoder, device, offload):
            if text_embeds is not None:
                e, m = text_embeds
                if e.shape[0] != len(prompts):
                    raise ValueError(f"text_embeds has {e.shape[0]} rows for {len(prompts)} prompts")
            else:
                e, m = encoder.encode(prompts)
            ue, um = encoder.encode(negs)
        # Pad both to one length so cond and uncond stack into one batch for guidance.
        L = max(e.shape[1], ue.shape[1])
        return _pad(e, L), _pad(m, L), _pad(ue, L), _pad(um, L)

    # -- persistence: our model folder format (io/model_folder.py) --------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `cascade.json` and one `stage_K/{config.json, model.safetensors}` per stage."""
        model_folder.save(folder, self.text_encoder, list(self.stages), prompt_expansion=self.prompt_expansion)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        text_encoder: TextEncoder | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> "Cascade":
        encoder, stages, index = model_folder.load_with_index(folder, text_encoder=text_encoder, device=device,
                                                              dtype=dtype)
        return cls(encoder, stages, prompt_expansion=index.get("prompt_expansion"))


def _size(stage, i: int, last: bool, planned: tuple[int, int], prev: Tensor | None, height, width) -> tuple[int, int]:
    """A stage's output size: the planned one, or, for a stage whose size follows its input (the x4
    upscaler), that size, refusing a request for another."""
    follows = None if prev is None else stage.output_size(tuple(prev.shape[-2:]))
    if follows is None:
        return planned
    asked = _asked(height, width, i, last)
    for name, a, got in zip(("height", "width"), asked, follows):
        if a is not None and a != got:
            raise ValueError(f"stage {i} enlarges its input exactly (to {follows[0]}x{follows[1]} here), so {name}={a} "
                             f"cannot be met; leave {name} unset for it or resize the input")
    return follows


def _asked(height, width, i: int, last: bool) -> list:
    """The height and width a caller asked of stage i (None = not asked): lists per stage, one int = the last."""
    def one(v):
        if isinstance(v, (list, tuple)):
            return v[i] if i < len(v) else None
        return v if last else None
    return [one(height), one(width)]


def _first_stage(first_stage: int | None, image: Tensor | None, total: int, upscaler: bool = False) -> int:
    """Where the cascade starts: stage 0 from text, or a super-resolution stage from a given image (stage 0
    itself when the cascade is an upscaler alone)."""
    if upscaler:
        if image is None:
            raise ValueError("this model is an upscaler: pass the image to enlarge (image=, or `openimagen upscale`)")
        if first_stage not in (None, 0) and not (isinstance(first_stage, int) and 0 <= first_stage < total):
            raise ValueError(f"first_stage={first_stage!r} is not a stage of this {total}-stage cascade")
        return first_stage or 0
    if first_stage is None:
        return 0 if image is None else 1
    if isinstance(first_stage, bool) or not isinstance(first_stage, int) or not 0 <= first_stage < total:
        raise ValueError(f"first_stage={first_stage!r} is not a stage of this {total}-stage cascade; "
                         f"give 0..{total - 1}")
    if first_stage == 0 and image is not None:
        raise ValueError("stage 0 draws from the text alone, so first_stage=0 takes no image; start at a "
                         "super-resolution stage (first_stage >= 1) or edit the image (editing.img2img)")
    if first_stage > 0 and image is None:
        raise ValueError(f"first_stage={first_stage} starts from a given low-res image: pass image=")
    return first_stage


def _device_of(module) -> torch.device | None:
    if isinstance(module, torch.nn.Module):
        p = next(module.parameters(), None)
        return None if p is None else p.device
    return getattr(module, "device", None)  # text encoders keep their device as an attribute


@contextlib.contextmanager
def _placed(module, device: torch.device | None, offload: bool):
    """Run a block with `module` on `device`; with `offload`, move it back home afterwards (to free memory)."""
    home = _device_of(module)
    movable = hasattr(module, "to") and home is not None and device is not None and home != device
    if movable:
        module.to(device)
    try:
        yield
    finally:
        if movable and offload:
            module.to(home)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _pad(t: Tensor, L: int) -> Tensor:
    if t.shape[1] == L:
        return t
    pad = [0, 0] * (t.dim() - 2) + [0, L - t.shape[1]]
    return F.pad(t, pad)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
