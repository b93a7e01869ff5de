"""Edit a user's image with any cascade: img2img, inpaint, outpaint, upscale.

Every edit is a per-stage plan for `Cascade.generate(plan=...)` (docs/architecture.md):

    img2img    start = the image at the stage's size, noised part-way (IF's strength rule)
    inpaint    the same start with the known region clean, and an after-step hook that keeps it
               (diffusion/editing.py: "keep_known", IF's; or "repaint", RePaint's re-noising)
    outpaint   inpaint on a padded canvas whose new area is the mask; sizes the U-Nets cannot take
               are rounded up and cropped back, or refused with the nearest valid sizes
    upscale    start the cascade at super-resolution stage k from the image (generate's first_stage),
               optionally img2img-SR / inpaint-SR against an `original`

The image (and mask) is resized to every stage that runs and the mask applies at every stage (IF does
the same), so "inpaint at 64, then 256" keeps the unmasked pixels of the original at every size.
Tensors only: images (1 or B, 3, H, W) in [-1, 1], masks (1 or B, 1, H, W) in [0, 1], 1 = repaint.
For DeepFloyd IF stages the defaults are diffusers' IF pipelines' (docs/reference stage3_and_editing.md
§2.1) and stage sizes follow IF's resize rule: short side = the stage's size, long side rounded to a
multiple of 8 (here: of the U-Net's multiple too), bicubic.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import canvas, options
from .canvas import extend_to, nearest_valid_sizes, resize_image, resize_mask, stage_size, valid_size  # noqa: F401
from .cascade import Cascade, CascadeOutput
from .diffusion.editing import BLENDS, blend as _blend, keep_known, repaint_known
from .sampling import StagePlan, noised_image

# The IF pipelines' defaults (diffusers, stage3_and_editing.md §2.1), by (mode, super-resolution stage?).
IF_DEFAULTS = {
    ("img2img", False): dict(strength=0.7, steps=80, guidance=10.0),                    # IFImg2ImgPipeline
    ("inpaint", False): dict(strength=1.0, steps=50, guidance=7.0),                     # IFInpaintingPipeline
    ("img2img", True): dict(strength=0.8, steps=50, guidance=4.0, noise_level=250.0),   # IFImg2ImgSuperResolution
    ("inpaint", True): dict(strength=0.8, steps=100, guidance=4.0, noise_level=0.0),    # IFInpaintingSuperResolution
    ("upscale", True): {},                                                              # IFSuperResolution: the stage's
}
# Our cascades: the stage's own steps/guidance/noise level. Super-resolution stages redraw from (nearly)
# pure noise by default: the edit is already in their low-res input, and an original noised only to 0.8
# would pull the repainted area back towards the old content.
OUR_DEFAULTS = {
    ("img2img", False): dict(strength=0.7), ("inpaint", False): dict(strength=1.0),
    ("img2img", True): dict(strength=1.0), ("inpaint", True): dict(strength=1.0), ("upscale", True): {},
}
# The inpainting blend when none is named: IF's keep_known for IF stages (diffusers' semantics); for ours
# RePaint's re-noising: as many correct objects, a smaller seam (docs/decisions.md#inpainting-blend).
OUR_BLEND = "repaint"
UPSCALE_STRENGTH = 0.8   # upscale(original= or strength=): the first stage's img2img-SR default (IF's)
_NOT_HERE = ("height", "width", "image", "plan", "first_stage")  # set by the edit itself


# ----------------------------------------------------------------------------------------------
# checks


def _check_image(image, n_prompts: int, name: str = "image") -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor in [-1, 1], got {got}")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} has NaN or infinite values")
    lo, hi = image.min().item(), image.max().item()
    if lo < -1 - 1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name} values must lie in [-1, 1], got {lo:.3g}..{hi:.3g}; "
                         "map a [0, 1] image with x * 2 - 1")
    if image.shape[0] not in (1, n_prompts):
        raise ValueError(f"{name} has {image.shape[0]} rows for {n_prompts} prompts; give one image, or one per prompt")
    return image


def _check_mask(mask, image: Tensor, n_prompts: int) -> Tensor:
    if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a (B or 1, 1, H, W) tensor in [0, 1] (1 = repaint), got {got}")
    if mask.shape[-2:] != image.shape[-2:]:
        (mh, mw), (h, w) = mask.shape[-2:], image.shape[-2:]
        raise ValueError(f"the mask is {mh}x{mw} but the image is {h}x{w}; give a mask of the image's size "
                         "(white = repaint, black = keep)")
    if mask.shape[0] not in (1, n_prompts):
        raise ValueError(f"mask has {mask.shape[0]} rows for {n_prompts} prompts; give one mask, or one per prompt")
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ValueError("mask has NaN or infinite values; give values in [0, 1] (1 = repaint)")
    binary = mask >= 0.5  # the thresholded mask decides; resizing per stage starts from the grey one (IF's order)
    if not binary.any():
        raise ValueError("the mask is empty (no pixel >= 0.5), so nothing would be repainted; "
                         "use img2img (or generate) to change the whole image")
    if binary.all():
        raise ValueError("the mask is all white, so everything is repainted: that is text-to-image (generate) "
                         "at strength 1, or img2img at that strength; leave black the pixels to keep")
    return mask


def _rows(x: Tensor, B: int) -> Tensor:
    """1 or P rows -> B = P * num_images rows, each prompt's images together (as generate orders them)."""
    if x.shape[0] == B:
        return x
    return x.expand(B, *x.shape[1:]) if x.shape[0] == 1 else x.repeat_interleave(B // x.shape[0], dim=0)


# ----------------------------------------------------------------------------------------------
# per-stage defaults


def edit_defaults(cascade: Cascade, mode: str, *, first_stage: int = 0, stop_at: int | None = None) -> dict:
    """Per-stage defaults of an edit ("img2img" | "inpaint" | "upscale"; stages before first_stage None):
    {"strength", "steps", "guidance", "noise_level"}: lists, None = the stage's own default."""
    n = len(cascade.stages) if stop_at is None else stop_at
    out = {k: [None] * n for k in ("strength", "steps", "guidance", "noise_level")}
    for i in range(first_stage, n):
        stage = cascade.stages[i]
        table = IF_DEFAULTS if stage.config.unet_kind == "if" else OUR_DEFAULTS
        for k, v in table.get((mode, bool(stage.config.lowres)), {}).items():
            out[k][i] = v
    return out


def _merge(value, defaults: list, n: int, total: int, name: str) -> list:
    given = options.per_stage(value, n, name, total)
    return [d if v is None else v for v, d in zip(given, defaults)]


def _strengths(value, defaults: list, first: int, n: int, total: int) -> list:
    """One number = the strength of the first stage that runs (the others keep their defaults); a list
    gives one per stage (None = default)."""
    if value is None or isinstance(value, (list, tuple)):
        merged = _merge(value, defaults, n, total, "strength")
    else:
        merged = list(defaults)
        merged[first] = value
    for i, s in enumerate(merged[first:], first):
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1):
            raise ValueError(f"strength must be a number in (0, 1] (1 = redraw from noise, small = stay close "
                             f"to the image), got {s!r}" + (f" for stage {i}" if i else ""))
    return merged


# ----------------------------------------------------------------------------------------------
# the edits


def img2img(cascade: Cascade, image: Tensor, prompts: str | Sequence[str], *, strength=None, **kw) -> CascadeOutput:
    """Redraw `image` with `prompts`: each stage starts from the image at its size noised to the first of
    the last int(N * strength) of its N timesteps. `strength` None = the model's defaults (IF: 0.7, then
    0.8 for stage II; ours: 0.7, then 1.0); one number sets the first stage's, a list each stage's.
    Every other keyword is `Cascade.generate`'s (steps, guidance, sampler, noise_level, seed, ...)."""
    P = _n_prompts(prompts)
    image = _check_image(image, P)
    return _edit(cascade, prompts, "img2img", image, None, strength, "keep_known", 1, kw)


def inpaint(cascade: Cascade, image: Tensor, mask: Tensor, prompts: str | Sequence[str], *, strength=None,
            blend: str | None = None, resample: int = 1, **kw) -> CascadeOutput:
    """Repaint where `mask` is white (>= 0.5), keep the rest, at every stage. `blend`: "keep_known"
    (IF's: the known region is the clean image throughout) or "repaint" (RePaint: re-noised to each step's
    level; `resample` = r redoes every step r times); None = the model's (IF: keep_known, ours: repaint).
    `strength` None = the model's defaults (1.0; IF stage II 0.8)."""
    P = _n_prompts(prompts)
    image = _check_image(image, P)
    return _edit(cascade, prompts, "inpaint", image, _check_mask(mask, image, P), strength, blend, resample, kw)


def outpaint(cascade: Cascade, image: Tensor, prompts: str | Sequence[str], *, left: int = 0, right: int = 0,
             top: int = 0, bottom: int = 0, fill: str = "edge", fit: str = "round", strength=None,
             blend: str | None = None, resample: int = 1, **kw) -> CascadeOutput:
    """Extend the canvas by the given pixels on each side and paint the new area (inpainting its mask).
    The new area starts as `fill` ("edge": the border pixels repeated, "reflect", "gray"). The canvas is
    scaled so its short side is each stage's size; when that is not whole multiples of a U-Net's
    downsampling, `fit="round"` paints a slightly larger canvas and crops it back, `fit="refuse"` raises
    naming the nearest valid sizes (`nearest_valid_sizes`)."""
    P = _n_prompts(prompts)
    image = _check_image(image, P)
    pads = dict(left=left, right=right, top=top, bottom=bottom)
    canvas.check_extension(pads)
    h, w = image.shape[-2:]
    extra = canvas.fit_extension(cascade, h, w, pads, fit, kw.get("stop_at"))
    grown, mask = canvas.pad_canvas(image, {k: pads[k] + extra[k] for k in pads}, fill)
    out = _edit(cascade, prompts, "inpaint", grown, mask, strength, blend, resample, kw, exact=True)
    if not any(extra.values()):
        return out
    hw = tuple(grown.shape[-2:])
    return CascadeOutput(images=[canvas.crop_back(x, hw, extra) for x in out.images], prompts=out.prompts)


def upscale(cascade: Cascade, image: Tensor, prompts: str | Sequence[str], *, from_stage: int | None = None,
            strength=None, mask: Tensor | None = None, original: Tensor | None = None, blend: str | None = None,
            resample: int = 1, **kw) -> CascadeOutput:
    """Enlarge a user's `image` with the super-resolution stages from `from_stage` on (default 1): the image
    is the low-res input of that stage (resized to the stage before it). With `strength` or `original`
    (the high-res image to start from; default `image` enlarged) each stage starts from the original
    noised part-way (IF's img2img-SR); with `mask` the unmasked pixels of `original` are kept (IF's
    inpainting-SR). `strength` None = 0.8 for the first stage, then the model's defaults.
    An upscaler alone (a cascade whose stage 0 is super-resolution: the SD x4 upscaler) enlarges the
    image as it is, at its own size rule."""
    if cascade.stages[0].config.lowres:
        return _upscaler_alone(cascade, image, prompts, from_stage, strength, mask, original, kw)
    from_stage = 1 if from_stage is None else from_stage
    total = len(cascade.stages)
    if total < 2:
        raise ValueError("this model has one stage and no super-resolution stage, so it cannot upscale an "
                         "image; use a cascade with super-resolution stages (or img2img at its size)")
    if isinstance(from_stage, bool) or not isinstance(from_stage, int) or not 1 <= from_stage < total:
        raise ValueError(f"from_stage={from_stage!r} is not a super-resolution stage of this {total}-stage "
                         f"cascade; give 1..{total - 1}")
    P = _n_prompts(prompts)
    image = _check_image(image, P)
    target = image if original is None else _check_image(original, P, "original")
    if mask is not None:
        mask = _check_mask(mask, target, P)
    mode = "inpaint" if mask is not None else "img2img" if (strength is not None or original is not None) else "upscale"
    h, w = target.shape[-2:]
    low = resize_image(image, stage_size(cascade.stages[from_stage - 1], h, w))
    if mode == "img2img" and strength is None:
        strength = UPSCALE_STRENGTH
    return _edit(cascade, prompts, mode, target, mask, strength, blend, resample, kw, first=from_stage, lowres=low)


def _upscaler_alone(cascade, image, prompts, from_stage, strength, mask, original, kw) -> CascadeOutput:
    if from_stage not in (None, 0):
        raise ValueError(f"from_stage={from_stage!r}: this model is an upscaler alone, which starts at its only stage")
    given = [name for name, v in (("strength", strength), ("mask", mask), ("original", original)) if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} need an IF super-resolution stage; the upscaler alone enlarges the "
                         "image as it is (drop them)")
    for k in _NOT_HERE:
        if k in kw:
            raise ValueError(f"{k}= is set by the upscale itself (the output is the upscaler's factor times the image)")
    P = _n_prompts(prompts)
    return cascade.generate(prompts, image=_rows(_check_image(image, P), P), first_stage=0, **kw)


# ----------------------------------------------------------------------------------------------
# the one path every edit takes


def default_blend(cascade, first: int = 0) -> str:
    """The blend used when none is named: IF's keep_known on IF stages, else OUR_BLEND."""
    return "keep_known" if cascade.stages[first].config.unet_kind == "if" else OUR_BLEND


def _edit(cascade, prompts, mode, image, mask, strength, blend, resample, kw, *, first=0, lowres=None,
          exact=False) -> CascadeOutput:
    for k in _NOT_HERE:
        if k in kw:
            raise ValueError(f"{k}= is set by the edit itself (sizes follow the image: resize or extend the "
                             "image instead)")
    if blend is None:
        blend = default_blend(cascade, first)
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose one of {list(BLENDS)}")
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be a whole number >= 1 (1 = no resampling), got {resample!r}")
    if resample > 1 and blend != "repaint":
        raise ValueError(f"resample={resample} needs blend='repaint' (keep_known never re-noises the known region)")
    stages, total = cascade.stages, len(cascade.stages)
    stop_at = kw.get("stop_at")
    n = total if stop_at is None else stop_at
    if not isinstance(n, int) or not first < n <= total:
        raise ValueError(f"stop_at={stop_at!r} is outside {first + 1}..{total}")
    d = edit_defaults(cascade, mode, first_stage=first, stop_at=n)
    run = dict(kw)
    for k in ("steps", "guidance", "noise_level"):
        run[k] = _merge(kw.get(k), d[k], n, total, k)
    strengths = _strengths(strength, d["strength"], first, n, total)

    h, w = image.shape[-2:]
    sizes = [None] * n
    for i in range(first, n):
        sizes[i] = canvas.exact_size(stages[i], h, w) if exact else stage_size(stages[i], h, w)
    known, masks = {}, {}
    for i in range(first, n):
        if strengths[i] is None:
            continue
        spec = stages[i].config.steps if run["steps"][i] is None else run["steps"][i]
        N = len(options.timesteps(stages[i], spec))
        if int(N * strengths[i]) == 0:
            raise ValueError(f"strength {strengths[i]} with {N} steps runs no step at stage {i} "
                             f"(int({N} * {strengths[i]}) = 0); raise the strength or the steps")
        known[i] = resize_image(image, sizes[i])
        if mask is not None:
            masks[i] = resize_mask(mask, sizes[i])
            if not masks[i].any():
                raise ValueError(f"the mask covers no pixel at stage {i}'s size {sizes[i][0]}x{sizes[i][1]} "
                                 "(resized, then thresholded at 0.5); make the masked area larger")

    def plan(i, shape):
        if strengths[i] is None:
            return StagePlan()
        B = shape[0]
        k = _rows(known[i], B)
        start = noised_image(k, strengths[i])
        if i not in masks:
            return StagePlan(start=start)
        m = _rows(masks[i], B)
        if blend == "keep_known":
            return StagePlan(start=_known_start(start, k, m), after_step=keep_known(k, m))
        return _repaint_plan(start, k, m, resample)

    P = _n_prompts(prompts)
    if lowres is not None:
        lowres = _rows(lowres, P)
    return cascade.generate(prompts, image=lowres, first_stage=first if first else None,
                            height=[s and s[0] for s in sizes], width=[s and s[1] for s in sizes],
                            plan=plan, **run)


def _known_start(start, known: Tensor, mask: Tensor):
    """IF's inpainting start: the noised image where the mask is 1, the clean image where it is 0."""
    def blended(shape, ts, stage, generator, device):
        x, ts = start(shape, ts, stage, generator, device)
        return _blend(known, mask, x), ts

    return blended


def _repaint_plan(start, known: Tensor, mask: Tensor, resample: int) -> StagePlan:
    # RePaint's hook needs the stage's (cut) timesteps, its generator and, to resample, the guided
    # denoiser: the start state and a pass-through wrapper hand them over when the stage runs.
    late = {}

    def bound_start(shape, ts, stage, generator, device):
        x, ts = start(shape, ts, stage, generator, device)
        late["hook"] = repaint_known(known.to(device), mask.to(device), stage.schedule, ts, generator=generator,
                                     resample=resample, denoise=lambda x, t: late["denoise"](x, t))
        return x, ts

    def capture(denoise):
        late["denoise"] = denoise
        return denoise

    return StagePlan(start=bound_start, wrappers=(capture,), after_step=lambda step: late["hook"](step))


def _n_prompts(prompts) -> int:
    return 1 if isinstance(prompts, str) else len(prompts)
