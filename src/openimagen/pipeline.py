"""The cascade: a text encoder and a list of diffusion stages, run in order.

Imagen (Saharia et al. 2022, §2): a base model draws a small image from the text; each
super-resolution stage sees the text and a noise-augmented, upsampled copy of the previous image
(noise-conditioning augmentation, §2.4; Ho et al. 2021 "Cascaded Diffusion Models").

A stage (stage.py) is one U-Net with its schedule and sampling defaults; this file runs them in order,
saves and loads them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import from_dict, load_json, save_json, to_dict
from . import options
from .data.transforms import to_pil  # re-exported: openimagen.pipeline.to_pil
from .diffusion import SAMPLERS, Parameterization, Step
from .sampling import GenerationCancelled, sample_stage  # noqa: F401 (GenerationCancelled: re-exported)
from .stage import Stage, StageConfig, unet_class
from .text import TextEncoder, check_prompts, text_encoder_from_spec

FORMAT = "openimagen-cascade"
StageCallback = Callable[[Step], "bool | None"]  # after every step of every stage; False cancels


class ModelFolderError(ValueError):
    """A model folder is missing a file or holds a corrupt one."""


# ----------------------------------------------------------------------------------------------
# Cascade


@dataclass
class CascadeOutput:
    images: list[Tensor]                    # one (B, 3, H, W) tensor in [-1, 1] per stage run
    prompts: list[str]

    def pil(self, stage: int = -1):
        return to_pil(self.images[stage])




class Cascade(torch.nn.Module):
    def __init__(self, text_encoder: TextEncoder | None, stages: Sequence[Stage]):
        super().__init__()
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        for i, s in enumerate(stages):
            if s.config.lowres != (i > 0):
                what = "needs no low-res input" if i == 0 else "must be a super-resolution stage (lowres=True)"
                raise ValueError(f"stage {i} {what}; check the order of the stages")
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
        seed: int = 0,
        stop_at: int | None = None,
        text_embeds: tuple[Tensor, Tensor] | None = None,
        autocast_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        offload: bool = False,
        progress: bool = True,
        callback: StageCallback | None = None,
    ) -> CascadeOutput:
        """Run every stage in order. Same seed, same arguments -> identical images.

        Per-stage arguments take one value for all stages or a list with one entry per stage (None = the
        stage's default). `steps` entries are a count, a named IF list ("smart50", "fast27", ...) or an
        explicit descending timestep list. `height`/`width` given as one int size the *last* stage run
        (earlier stages keep their resolution); give lists to size each stage. `image` (B, 3, h, w) in
        [-1, 1] skips stage 0: the cascade starts by enlarging it. `device` is where sampling runs; with
        `offload=True` each model (text encoder, then each stage) sits there only while it runs and goes
        back to its own device afterwards, so a cascade bigger than the accelerator's memory still runs.
        `noise_level` is the low-res noise augmentation of super-resolution stages (their
        `lowres_schedule`'s units). `callback(step)` runs after every sampling step with a
        `diffusion.Step` whose `stage` is set (x_t, x, x0_hat: previews); returning False stops the run
        with `GenerationCancelled`.
        """
        n = len(self.stages) if stop_at is None else stop_at
        first = 0 if image is None else 1
        if not first < n <= len(self.stages):
            raise ValueError(f"stop_at={stop_at} is outside {first + 1}..{len(self.stages)}")
        prompts = check_prompts(prompts)
        if any(not p.strip() for p in prompts) and text_embeds is None:
            raise ValueError("empty prompt: give a text description of the image")
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
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

        cond_e, cond_m, unc_e, unc_m = self._encode(prompts, negative_prompt, text_embeds, device, offload)
        rep = lambda t: t.repeat_interleave(num_images, dim=0)
        cond_e, cond_m, unc_e, unc_m = map(rep, (cond_e, cond_m, unc_e, unc_m))
        generator = torch.Generator("cpu").manual_seed(seed)
        B = cond_e.shape[0]
        prev = None if image is None else options.check_image(image, len(prompts), B).to(device)

        images: list[Tensor] = []
        for i in range(first, n):
            stage: Stage = self.stages[i]
            ts = timesteps[i].to(device)
            h, w = sizes[i]
            bar = _progress(len(ts), f"stage {i} ({h}x{w}px)", progress)

            def report(step, i=i, bar=bar):
                bar.update(1)
                return None if callback is None else callback(dataclasses.replace(step, stage=i))

            with _placed(stage, device, offload):
                try:
                    x = sample_stage(
                        stage,
                        {"text_embeds": cond_e.to(device), "text_mask": cond_m.to(device)},
                        {"text_embeds": unc_e.to(device), "text_mask": unc_m.to(device)},
                        (B, 3, h, w), ts, generator=generator, sampler=sampler[i], guidance=guidance[i],
                        lowres=prev, noise_level=noise_level[i], callback=report,
                        autocast_dtype=autocast_dtype, stage_index=i,
                    )
                finally:
                    bar.close()
            prev = x.clamp(-1, 1)
            images.append(prev)
        return CascadeOutput(images=images, prompts=[p for p in prompts for _ in range(num_images)])

    def _encode(self, prompts, negative_prompt, text_embeds, device=None, offload=False):
        if self.text_encoder is None:
            what = "for the unconditional branch" if text_embeds is not None else ": pass text_embeds=(embeds, mask)"
            raise ValueError(f"this cascade has no text encoder{what}")
        negs = [""] * len(prompts) if negative_prompt is None else check_prompts(negative_prompt)
        if len(negs) == 1 and len(prompts) > 1:
            negs = negs * len(prompts)
        if len(negs) != len(prompts):
            raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts; give one or one each")
        with _placed(self.text_encoder, device, offload):
            if text_embeds is not None:
                e, m = text_embeds
                if e.shape[0] != len(prompts):
                    raise ValueError(f"text_embeds has {e.shape[0]} rows for {len(prompts)} prompts")
            else:
                e, m = self.text_encoder.encode(prompts)
            ue, um = self.text_encoder.encode(negs)
        # Pad both to one length so cond and uncond stack into one batch for guidance.
        L = max(e.shape[1], ue.shape[1])
        return _pad(e, L), _pad(m, L), _pad(ue, L), _pad(um, L)

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `cascade.json` and one `stage_K/{config.json, model.safetensors}` per stage."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for k, stage in enumerate(self.stages):
            d = folder / f"stage_{k}"
            d.mkdir(exist_ok=True)
            save_json(to_dict(stage.config), d / "config.json")
            state = {n: t.detach().contiguous() for n, t in stage.unet.state_dict().items()}
            tmp = d / "model.safetensors.tmp"
            save_file(state, str(tmp), metadata={"format": "pt"})
            os.replace(tmp, d / "model.safetensors")
            names.append(d.name)
        spec = self.text_encoder.spec() if self.text_encoder is not None else None
        save_json({"format": FORMAT, "version": 1, "text_encoder": spec, "stages": names}, folder / "cascade.json")

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        text_encoder: TextEncoder | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> "Cascade":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"model folder {folder} does not exist; pass a folder written by save_pretrained or `openimagen train`")
        index_path = folder / "cascade.json"
        if not index_path.is_file():
            raise ModelFolderError(f"{folder} has no cascade.json: it is not an openimagen model folder")
        index = load_json(index_path)
        if index.get("format") != FORMAT:
            raise ModelFolderError(f"{index_path} is not an openimagen cascade index (format={index.get('format')!r})")
        stages = [_load_stage(folder / name, device, dtype) for name in index["stages"]]
        if text_encoder is None and index.get("text_encoder") is not None:
            text_encoder = text_encoder_from_spec(index["text_encoder"])
        return cls(text_encoder, stages)


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


def _load_stage(d: Path, device, dtype) -> Stage:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not d.is_dir():
        raise ModelFolderError(f"stage folder {d} is missing; the model folder is incomplete")
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file():
        raise ModelFolderError(f"{cfg_path} is missing; the stage cannot be built without it")
    if not weights.is_file():
        raise ModelFolderError(f"{weights} is missing; copy the weights back or re-save the model")
    config = from_dict(StageConfig, load_json(cfg_path), where=str(cfg_path))
    with torch.device("meta"):  # no time spent on random init that the weights overwrite
        unet = unet_class(config.unet)(config.unet)
    stage = Stage(config, unet)
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights} is corrupt or not a safetensors file ({e}); re-download or re-save it") from None
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    result = stage.unet.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelFolderError(
            f"{weights} does not match {cfg_path}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    # Invariant: every U-Net keeps all of its state in the state dict (no non-persistent buffers).
    assert not any(b.is_meta for b in stage.unet.buffers()), "a U-Net buffer is not saved in its weights"
    return stage.to(device).eval()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
