"""Edit requests: a user's image (and mask) through a cascade, as JSON; the work is editing.py's.

    request = EditRequest(mode="inpaint", image="photo.png", mask="mask.png", prompt=["a blue star"])
    result = run_edit(request)                 # files checked before the model loads
    api.write_pngs(result, "out/")             # the PNG text holds the request and its files' sha256

`run_edit` resolves every default (editing.edit_defaults per mode and stage, then the stage's own) and
runs the library with the resolved values, so the request it returns gives the same images again bit
for bit. Files are stored as absolute paths with their sha256; running a stored request checks them.
`api.EditRequest` and `api.run_edit` are these (api.py is where callers look for requests).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import options
from .api import PER_STAGE, PRECISIONS, GenerateResult, from_json, normalise

EDIT_FORMAT = "openimagen-edit-request"
MODES = ("img2img", "inpaint", "outpaint", "upscale")
EDIT_PER_STAGE = (*PER_STAGE[:4], "strength")  # sizes come from the image (and `extend`), not height/width
SIDES = ("left", "right", "top", "bottom")
TARGETS = ("width", "height", "aspect")
_REPAINTS = ("inpaint", "outpaint", "upscale")
_ONLY = {"mask": ("inpaint", "upscale"), "original": ("upscale",), "extend": ("outpaint",), "fill": ("outpaint",),
         "fit": ("outpaint",), "blend": _REPAINTS, "resample": _REPAINTS, "from_stage": ("upscale",)}


@dataclass(frozen=True)
class EditRequest:
    """An edit of an image file with a cascade. None = the default of the mode for this model (for
    DeepFloyd IF: its diffusers pipeline's, e.g. img2img strength 0.7); per-stage fields as in
    GenerateRequest (one value or one per stage)."""
    mode: str                          # img2img | inpaint | outpaint | upscale
    image: str                         # the input image file (upscale: the low-res image to enlarge)
    prompt: list[str]
    mask: str | None = None            # inpaint / upscale: white (>= 50% grey) = repaint, black = keep
    original: str | None = None        # upscale: the full-size image that img2img-SR / inpaint-SR start from
    sha256: dict | None = None         # {"image": hex, "mask": hex, "original": hex} of the files used
    strength: Any = None               # in (0, 1]: how far into the noise the image goes; one number sets
                                       # the first stage run (the others keep their defaults), or per stage
    extend: dict | None = None         # outpaint: pixels per side {left,right,top,bottom}, or {width,height}
                                       # / {aspect: "16:9"} (centred); resolved to the four sides
    fill: str | None = None            # outpaint: how the new area starts: edge | reflect | gray
    fit: str | None = None             # outpaint: a canvas the U-Nets cannot take: round (and crop) | refuse
    blend: str | None = None           # how the kept area is put back each step: keep_known (IF's) | repaint
    resample: int | None = None        # blend="repaint": redo every step this many times (RePaint)
    from_stage: int | None = None      # upscale: the first stage to run (default 1: enlarge with stage 1)
    negative_prompt: str | None = None
    seed: int = 0
    num_images: int = 1
    steps: Any = None
    guidance: Any = None
    sampler: Any = None
    noise_level: Any = None
    stop_at: int | None = None         # run stages .. stop_at-1
    model: str | None = None
    sr: str | list[str] | None = None
    precision: str = "auto"
    lora: tuple[str, ...] = ()         # LoRA adapters "PATH[:scale]" on the model (lora.py)

    def __post_init__(self):
        normalise(self, EDIT_PER_STAGE)
        if isinstance(self.lora, str) or not all(isinstance(x, str) for x in self.lora):
            raise ValueError(f"lora={self.lora!r} must be a list of 'PATH[:scale]' strings")
        object.__setattr__(self, "lora", tuple(self.lora))
        if self.mode not in MODES:
            raise ValueError(f"unknown edit mode {self.mode!r}; choose one of {list(MODES)}")
        for name, modes in _ONLY.items():
            if getattr(self, name) is not None and self.mode not in modes:
                raise ValueError(f"{name} is not used by {self.mode} (only by {', '.join(modes)})")
        if self.mode == "inpaint" and self.mask is None:
            raise ValueError("inpaint needs a mask (white = repaint, black = keep); without one use img2img")
        for s in self.strength if isinstance(self.strength, list) else [self.strength]:
            if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1):
                raise ValueError(f"strength must be in (0, 1] (small keeps the image, 1 redraws it), got {s!r}")
        if self.resample is not None and (isinstance(self.resample, bool) or not isinstance(self.resample, int)
                                          or self.resample < 1):
            raise ValueError(f"resample must be a whole number >= 1 (1 = no resampling), got {self.resample!r}")
        if self.from_stage is not None and (isinstance(self.from_stage, bool) or not isinstance(self.from_stage, int)
                                            or self.from_stage < 1):
            raise ValueError(f"from_stage must be a stage index >= 1 (0 draws from text), got {self.from_stage!r}")
        if self.mode == "outpaint":
            check_extend(self.extend)

    def to_json(self) -> str:
        return json.dumps({"format": EDIT_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "EditRequest":
        return from_json(cls, text, EDIT_FORMAT, "an edit request", ("mode", "image", "prompt"))


# ----------------------------------------------------------------------------------------------
# outpainting's extension: what a user may write, and the four sides it means


def check_extend(extend) -> None:
    if not isinstance(extend, dict) or not extend:
        raise ValueError(f"outpaint needs extend: pixels per side, e.g. {{'left': 32, 'right': 32}}, "
                         f"or a target {{'width': 96}} / {{'aspect': '16:9'}}; got {extend!r}")
    keys = set(extend)
    if not (keys <= set(SIDES) or keys <= set(TARGETS)) or {"aspect"} < keys:
        raise ValueError(f"extend takes sides {list(SIDES)} or a target (width and/or height, or aspect alone); "
                         f"got {sorted(keys)}")
    for k, v in extend.items():
        if k == "aspect":
            aspect_ratio(v)
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0 or (k in TARGETS and v < 1):
            raise ValueError(f"extend {k}={v!r}: give a whole number of pixels (>= 0)")
    if keys <= set(SIDES) and not any(extend.values()):
        raise ValueError("extend adds 0 pixels on every side: nothing to outpaint; give e.g. right=32")


def aspect_ratio(text) -> float:
    """'16:9', '16/9' or '1.78' -> width / height."""
    try:
        parts = [float(p) for p in str(text).replace("/", ":").split(":")]
        ratio = parts[0] / parts[1] if len(parts) == 2 else parts[0] if len(parts) == 1 else float("nan")
    except (ValueError, ZeroDivisionError):
        ratio = float("nan")
    if not 0 < ratio < float("inf"):
        raise ValueError(f"aspect {text!r} is not a ratio; write width:height, e.g. 16:9")
    return ratio


def sides_for(extend: dict, h: int, w: int) -> dict:
    """The four sides (pixels) that `extend` adds to an h x w image; targets are reached centred
    (canvas.extend_to: an odd pixel goes right / bottom)."""
    from .canvas import extend_to

    if set(extend) <= set(SIDES):
        return {k: int(extend.get(k, 0)) for k in SIDES}
    aspect = aspect_ratio(extend["aspect"]) if "aspect" in extend else None
    sides = extend_to(h, w, height=extend.get("height"), width=extend.get("width"), aspect=aspect)
    if not any(sides.values()):
        what = f"aspect {extend['aspect']}" if aspect else f"the size {extend.get('width', w)}x{extend.get('height', h)}"
        raise ValueError(f"the image ({w}x{h}) already has {what}: nothing to outpaint")
    return sides


# ----------------------------------------------------------------------------------------------
# resolving and running


def resolve_inputs(request: EditRequest) -> EditRequest:
    """The request with absolute file paths, their sha256 (kept if already stored: then checked on load)
    and `extend` as four sides. Needs no model."""
    from . import images

    files, sha = {}, dict(request.sha256 or {})
    for name in ("image", "mask", "original"):
        path = getattr(request, name)
        if path is not None:
            files[name] = str(Path(path).resolve())
            sha.setdefault(name, images.file_sha256(path))
    extend = request.extend
    if request.mode == "outpaint":
        extend = sides_for(extend, *images.image_size(files["image"]))
    return dataclasses.replace(request, **files, sha256={k: sha[k] for k in files}, extend=extend)


def resolve_edit(cascade, request: EditRequest) -> EditRequest:
    """The request with every default filled in from the model and the mode: stop_at, from_stage, per-stage
    lists (None before the first stage run) of steps, guidance, sampler, noise level, strength, and the
    blend / resample / fill / fit that apply."""
    from . import editing

    req = _check_stages(cascade, request)
    n, total, first = req.stop_at, len(cascade.stages), req.from_stage or 0
    kind = {"outpaint": "inpaint"}.get(req.mode, req.mode)  # outpainting is inpainting on a larger canvas
    strength = req.strength
    if req.mode == "upscale":
        kind = "inpaint" if req.mask else "img2img" if strength is not None or req.original else "upscale"
        if kind == "img2img" and strength is None:
            strength = editing.UPSCALE_STRENGTH
    d = editing.edit_defaults(cascade, kind, first_stage=first, stop_at=n)
    given = {k: options.per_stage(getattr(req, k), n, k, total) for k in EDIT_PER_STAGE[:4]}
    cfgs = [s.config for s in cascade.stages[:n]]

    def each(name, own):  # given, else the edit's default, else the stage's own
        return [None if i < first else v if v is not None else dv if dv is not None else own(c)
                for i, (c, v, dv) in enumerate(zip(cfgs, given[name], d.get(name, [None] * n)))]

    if strength is None or isinstance(strength, list):  # editing.py's rule: one number is the first stage's
        strength = [dv if v is None else v for v, dv in zip(options.per_stage(strength, n, "strength", total),
                                                            d["strength"])]
    else:
        strength = [strength if i == first else dv for i, dv in enumerate(d["strength"])]
    # The named options an edit leaves out take the library function's own defaults (read from it, not copied).
    fn = {"img2img": None, "inpaint": editing.inpaint, "outpaint": editing.outpaint, "upscale": editing.upscale}
    params = {} if fn[req.mode] is None else inspect.signature(fn[req.mode]).parameters
    named = ("fill", "fit") if req.mode == "outpaint" else ()
    named += ("blend", "resample") if kind == "inpaint" else ()
    chosen = {k: params[k].default if getattr(req, k) is None else getattr(req, k) for k in named}
    if "blend" in chosen and chosen["blend"] is None:  # the library chooses by model (editing.default_blend)
        chosen["blend"] = editing.default_blend(cascade, first)
    return dataclasses.replace(
        req, **chosen, steps=each("steps", lambda c: c.steps), guidance=[None if g is None else float(g) for g in
                                                               each("guidance", lambda c: c.guidance)],
        sampler=each("sampler", lambda c: c.sampler),
        noise_level=[None if not c.lowres or v is None else float(v)
                     for c, v in zip(cfgs, each("noise_level", lambda c: c.noise_level))],
        strength=None if all(s is None for s in strength) else strength)  # None: no stage starts from the image


def run_edit(request: EditRequest, *, cascade=None, device: str = "cpu", offload: bool = False,
             progress: bool = True, callback=None) -> GenerateResult:
    """Edit what `request` asks for; `cascade` is a loaded model (default: load request.model). The files
    are read and checked before the model loads, so a bad input fails in a moment; `callback` as in `run`."""
    from . import editing, images, preflight

    from .precision import resolve_precision

    preflight.check_device(device)
    preflight.check_numbers(request)
    req = resolve_inputs(request)
    req = dataclasses.replace(req, precision=resolve_precision(req.precision, device))
    image = images.load_image(req.image, sha256=req.sha256["image"])
    original = None if req.original is None else images.load_image(req.original, sha256=req.sha256["original"])
    mask = None
    if req.mask is not None:  # the mask goes with the full-size image it repaints
        name, path, ref = ("original", req.original, original) if original is not None else ("image", req.image, image)
        mask = images.load_mask(req.mask, size=tuple(ref.shape[-2:]), image_name=f"{name} {path}",
                                sha256=req.sha256["mask"])
    if cascade is None:
        from .load import load_model

        if req.model is None:
            preflight.vocabulary_warning(req.prompt)
        cascade = load_model(req.model, sr=req.sr, device="cpu" if offload else device,
                             dtype=PRECISIONS[req.precision], lora=req.lora)
    req = resolve_edit(cascade, req)
    preflight.check_resolved(cascade, req, device)
    kw = dict(steps=req.steps, guidance=req.guidance, sampler=req.sampler, noise_level=req.noise_level,
              seed=req.seed, num_images=req.num_images, negative_prompt=req.negative_prompt, stop_at=req.stop_at,
              device=device, offload=offload, progress=progress, callback=callback)
    # None: the library's default (the resolved strength is None only where no stage starts from the image)
    kw.update({k: v for k, v in dict(strength=req.strength, blend=req.blend, resample=req.resample).items()
               if v is not None})
    if req.mode == "img2img":
        out = editing.img2img(cascade, image, req.prompt, **kw)
    elif req.mode == "inpaint":
        out = editing.inpaint(cascade, image, mask, req.prompt, **kw)
    elif req.mode == "outpaint":
        shape = {k: v for k, v in dict(fill=req.fill, fit=req.fit).items() if v is not None}
        out = editing.outpaint(cascade, image, req.prompt, **req.extend, **shape, **kw)
    else:
        extra = {k: v for k, v in dict(mask=mask, original=original).items() if v is not None}
        out = editing.upscale(cascade, image, req.prompt, from_stage=req.from_stage, **extra, **kw)
    return GenerateResult(images=out.images, prompts=out.prompts, request=req,
                          first_stage=req.stop_at - len(out.images))


def _check_stages(cascade, req: EditRequest) -> EditRequest:
    """stop_at and from_stage against the model's stages (filled in: the resolved request names them)."""
    n = len(cascade.stages)
    first = 0
    upscaler = cascade.stages[0].config.lowres  # an upscaler alone (the SD x4): it starts at stage 0
    if req.mode == "upscale" and upscaler:
        if req.from_stage is not None:
            raise ValueError(f"from_stage={req.from_stage}: {req.model} is an upscaler alone; give no --from-stage")
    elif req.mode == "upscale":
        if n == 1:
            raise ValueError(f"{req.model or 'the bundled model'} has one stage and nothing to upscale with; use a "
                             "cascade with a super-resolution stage (DeepFloyd IF: add --sr DeepFloyd/IF-II-L-v1.0)")
        first = 1 if req.from_stage is None else req.from_stage
        if first >= n:
            raise ValueError(f"from_stage={first}, but this model's super-resolution stages are 1..{n - 1}")
    stop = n if req.stop_at is None else req.stop_at
    if not first < stop <= n:
        raise ValueError(f"stop_at={req.stop_at} is outside {first + 1}..{n}")
    return dataclasses.replace(req, stop_at=stop, from_stage=first if req.mode == "upscale" and not upscaler else None)
