"""Requests: what a user asks for, as JSON, and the one function that runs it.

    request = GenerateRequest(prompt=["a red circle above a blue square"], seed=3)
    result = run(request)                      # loads request.model (None: the bundled model)
    write_pngs(result, "out/")                 # every PNG carries result.request as PNG text

`run` resolves every default from the model (steps, guidance, sampler, noise level and size per stage)
and returns the fully resolved request with the images, so running that request again gives the same
images bit for bit. The CLI maps its arguments to a request and calls these; a server does the same.

    edit = EditRequest(mode="inpaint", image="photo.png", mask="mask.png", prompt=["a blue star"])
    write_pngs(run_edit(edit), "out/")         # the PNG text holds the files' sha256 too
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__, options

PNG_KEY = "openimagen"                 # the PNG text chunk holding {"request", "stage", "index", "version"}
REQUEST_FORMAT = "openimagen-generate-request"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PER_STAGE = ("steps", "guidance", "sampler", "noise_level", "height", "width")


@dataclass(frozen=True)
class GenerateRequest:
    """Text-to-image with a cascade. Per-stage fields take one value for every stage or a list with one
    entry per stage (None = the model's default); `height`/`width` given as one int size the last stage."""
    prompt: list[str]
    negative_prompt: str | None = None
    seed: int = 0
    num_images: int = 1
    steps: Any = None                  # count, named IF list ("smart50") or explicit timestep list
    guidance: Any = None
    sampler: Any = None
    noise_level: Any = None            # low-res noise augmentation of SR stages (their own units; IF: 0-999)
    height: Any = None
    width: Any = None
    stop_at: int | None = None         # run stages 0 .. stop_at-1
    model: str | None = None           # what `load_model` takes: None (bundled), a folder, an IF hub id
    sr: str | None = None              # an IF stage II to run after an IF stage I `model`
    precision: str = "fp32"            # weights dtype: fp32 | bf16 | fp16

    def __post_init__(self):
        normalise(self, PER_STAGE)

    def to_json(self) -> str:
        return json.dumps({"format": REQUEST_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "GenerateRequest":
        return from_json(cls, text, REQUEST_FORMAT, "a generation request", ("prompt",))


def normalise(request, per_stage: tuple[str, ...]) -> None:
    """What every request checks: one spelling for prompts and per-stage lists, a known precision, a seed."""
    prompt = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
    object.__setattr__(request, "prompt", prompt)
    for name in per_stage:  # JSON has lists, callers may pass tuples: one spelling
        v = getattr(request, name)
        if isinstance(v, tuple):
            object.__setattr__(request, name, list(v))
    if request.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {request.precision!r}; choose one of {list(PRECISIONS)}")
    if isinstance(request.seed, bool) or not isinstance(request.seed, int):
        raise ValueError(f"seed must be a whole number, got {request.seed!r}")


def from_json(cls, text: str | dict, fmt: str, what: str, required: tuple[str, ...]):
    data = json.loads(text) if isinstance(text, str) else dict(text)
    got = data.pop("format", fmt)
    if got != fmt:
        raise ValueError(f"not {what} (format {got!r})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown request field(s) {unknown}; valid fields are {sorted(known)}")
    for name in required:
        if name not in data:
            raise ValueError(f"{what} needs a{'n' * (name[0] in 'aeiou')} {name}")
    return cls(**data)


@dataclass
class GenerateResult:
    images: list[Tensor]               # one (B, 3, H, W) tensor in [-1, 1] per stage run
    prompts: list[str]                 # one per image row
    request: "GenerateRequest | EditRequest"  # resolved: running it again gives the same images
    first_stage: int = 0               # the stage index of images[0] (an upscale starts past stage 0)


def resolve(cascade, request: GenerateRequest) -> GenerateRequest:
    """The request with every default filled in from the model: per-stage lists of concrete values."""
    n = len(cascade.stages) if request.stop_at is None else request.stop_at
    if not 0 < n <= len(cascade.stages):
        raise ValueError(f"stop_at={request.stop_at} is outside 1..{len(cascade.stages)}")
    stages, total = cascade.stages[:n], len(cascade.stages)
    each = {name: options.per_stage(getattr(request, name), n, name, total) for name in PER_STAGE[:4]}
    sizes = options.stage_sizes(stages, request.height, request.width)
    cfgs = [s.config for s in stages]
    return dataclasses.replace(
        request,
        steps=[c.steps if v is None else v for c, v in zip(cfgs, each["steps"])],
        guidance=[float(c.guidance if v is None else v) for c, v in zip(cfgs, each["guidance"])],
        sampler=[c.sampler if v is None else v for c, v in zip(cfgs, each["sampler"])],
        noise_level=[None if not c.lowres else float(c.lowres_aug if v is None else v)
                     for c, v in zip(cfgs, each["noise_level"])],
        height=[h for h, _ in sizes], width=[w for _, w in sizes], stop_at=n,
    )


def run(request: GenerateRequest, *, cascade=None, device: str = "cpu", offload: bool = False,
        progress: bool = True, callback=None) -> GenerateResult:
    """Generate what `request` asks for; `cascade` is a loaded model (default: load request.model).
    `callback(step)` sees every sampling step (`diffusion.Step`, with x0_hat); False cancels."""
    if cascade is None:
        from .load import load_model

        cascade = load_model(request.model, sr=request.sr, device="cpu" if offload else device,
                             dtype=PRECISIONS[request.precision])
    req = resolve(cascade, request)
    out = cascade.generate(
        req.prompt, negative_prompt=req.negative_prompt, num_images=req.num_images, steps=req.steps,
        guidance=req.guidance, sampler=req.sampler, noise_level=req.noise_level, height=req.height,
        width=req.width, seed=req.seed, stop_at=req.stop_at, device=device, offload=offload,
        progress=progress, callback=callback,
    )
    return GenerateResult(images=out.images, prompts=out.prompts, request=req)


# ----------------------------------------------------------------------------------------------
# Edits: a user's image (and mask) through the cascade; the library is editing.py


EDIT_FORMAT = "openimagen-edit-request"
MODES = ("img2img", "inpaint", "outpaint", "upscale")
EDIT_PER_STAGE = PER_STAGE[:4]         # sizes come from the image (and `extend`), not from height/width
SIDES = ("left", "right", "top", "bottom")
TARGETS = ("width", "height", "aspect")
_REPAINTS = ("inpaint", "outpaint", "upscale")
_ONLY = {"mask": ("inpaint", "upscale"), "original": ("upscale",), "extend": ("outpaint",), "fill": ("outpaint",),
         "fit": ("outpaint",), "blend": _REPAINTS, "resample": _REPAINTS, "from_stage": ("upscale",)}


@dataclass(frozen=True)
class EditRequest:
    """An edit of an image file with a cascade (editing.py does the work). Files are stored as paths
    with their sha256, so running the request again checks it has the same input. None = the default
    of the mode for this model (for DeepFloyd IF: its diffusers pipeline's, e.g. img2img strength 0.7)."""
    mode: str                          # img2img | inpaint | outpaint | upscale
    image: str                         # the input image file (upscale: the low-res image to enlarge)
    prompt: list[str]
    mask: str | None = None            # inpaint / upscale: white (>= 50% grey) = repaint, black = keep
    original: str | None = None        # upscale: the full-size image that img2img-SR / inpaint-SR start from
    sha256: dict | None = None         # {"image": hex, "mask": hex, "original": hex} of the files used
    strength: float | None = None      # in (0, 1]: how far into the noise the image goes (1 = all the way)
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
    steps: Any = None                  # per stage, as in GenerateRequest
    guidance: Any = None
    sampler: Any = None
    noise_level: Any = None
    stop_at: int | None = None         # run stages .. stop_at-1
    model: str | None = None
    sr: str | None = None
    precision: str = "fp32"

    def __post_init__(self):
        normalise(self, EDIT_PER_STAGE)
        if self.mode not in MODES:
            raise ValueError(f"unknown edit mode {self.mode!r}; choose one of {list(MODES)}")
        for name, modes in _ONLY.items():
            if getattr(self, name) is not None and self.mode not in modes:
                raise ValueError(f"{name} is not used by {self.mode} (only by {', '.join(modes)})")
        if self.mode == "inpaint" and self.mask is None:
            raise ValueError("inpaint needs a mask (white = repaint, black = keep); without one use img2img")
        if self.strength is not None and (isinstance(self.strength, bool) or not isinstance(self.strength, (int, float))
                                          or not 0 < self.strength <= 1):
            raise ValueError(f"strength must be in (0, 1] (small keeps the image, 1 redraws it), got {self.strength!r}")
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
    """The four sides (pixels) that `extend` adds to an h x w image; targets are reached centred."""
    if set(extend) <= set(SIDES):
        return {k: int(extend.get(k, 0)) for k in SIDES}
    if "aspect" in extend:
        r = aspect_ratio(extend["aspect"])
        W, H = (max(w, round(h * r)), h) if w / h < r else (w, max(h, round(w / r)))
        if (W, H) == (w, h):
            raise ValueError(f"the image ({w}x{h}) already has aspect {extend['aspect']}: nothing to outpaint")
    else:
        W, H = extend.get("width", w), extend.get("height", h)
        if W < w or H < h or (W, H) == (w, h):
            raise ValueError(f"extend to {W}x{H} from a {w}x{h} image: outpainting only grows the canvas; "
                             f"give a size larger than {w}x{h}")
    return {"left": (W - w) // 2, "right": W - w - (W - w) // 2, "top": (H - h) // 2, "bottom": H - h - (H - h) // 2}


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


def run_edit(request: EditRequest, *, cascade=None, device: str = "cpu", offload: bool = False,
             progress: bool = True, callback=None) -> GenerateResult:
    """Edit what `request` asks for. The files are read and checked before the model loads, so a bad
    input fails in a moment; `callback` as in `run`."""
    from . import images

    req = resolve_inputs(request)
    image = images.load_image(req.image, sha256=req.sha256["image"])
    original = None if req.original is None else images.load_image(req.original, sha256=req.sha256["original"])
    mask = None
    if req.mask is not None:  # the mask goes with the full-size image it repaints
        ref = ("original", req.original, original) if original is not None else ("image", req.image, image)
        mask = images.load_mask(req.mask, size=tuple(ref[2].shape[-2:]), image_name=f"{ref[0]} {ref[1]}",
                                sha256=req.sha256["mask"])
    if cascade is None:
        from .load import load_model

        cascade = load_model(req.model, sr=req.sr, device="cpu" if offload else device,
                             dtype=PRECISIONS[req.precision])
    req = _check_stages(cascade, req)

    from . import editing

    kw = dict(steps=req.steps, guidance=req.guidance, sampler=req.sampler, noise_level=req.noise_level,
              seed=req.seed, num_images=req.num_images, negative_prompt=req.negative_prompt, stop_at=req.stop_at,
              device=device, offload=offload, progress=progress, callback=callback)
    # None: the library's default (so a request names only what differs from it)
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
    if req.mode == "upscale":
        if n == 1:
            raise ValueError(f"{req.model or 'the bundled model'} has one stage and nothing to upscale with; use a "
                             "cascade with a super-resolution stage (DeepFloyd IF: add --sr DeepFloyd/IF-II-L-v1.0)")
        first = 1 if req.from_stage is None else req.from_stage
        if first >= n:
            raise ValueError(f"from_stage={first}, but this model's super-resolution stages are 1..{n - 1}")
    stop = n if req.stop_at is None else req.stop_at
    if not first < stop <= n:
        raise ValueError(f"stop_at={req.stop_at} is outside {first + 1}..{n}")
    return dataclasses.replace(req, stop_at=stop, from_stage=first if req.mode == "upscale" else None)


# ----------------------------------------------------------------------------------------------
# PNGs that remember how they were made


def write_pngs(result: GenerateResult, out_dir: str | os.PathLike, *, stages: str = "all") -> list[Path]:
    """Write every image as `NN-<prompt>-stageK-<size>px.png` with the resolved request as PNG text;
    each file appears whole or not at all (written beside, then renamed)."""
    from PIL.PngImagePlugin import PngInfo

    from .data.transforms import to_pil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = json.loads(result.request.to_json())
    written = []
    for k, images in enumerate(result.images, start=result.first_stage):
        h, w = images.shape[-2:]
        res = f"{w}" if h == w else f"{w}x{h}"
        for i, (img, prompt) in enumerate(zip(to_pil(images), result.prompts)):
            info = PngInfo()
            info.add_text(PNG_KEY, json.dumps({"request": request, "stage": k, "index": i, "version": __version__},
                                              sort_keys=True))
            path = out / f"{i:02d}-{_slug(prompt)}-stage{k}-{res}px.png"
            tmp = path.with_name(path.name + ".tmp")
            img.save(tmp, format="PNG", pnginfo=info)
            os.replace(tmp, path)
            written.append(path)
    return written


def request_from_png(path: str | os.PathLike) -> GenerateRequest | EditRequest:
    """The request stored in a PNG that openimagen wrote (a generation or an edit), to run it again."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--from-png {path}: no such file")
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(PNG_KEY)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable PNG ({e})") from None
    if text is None:
        raise ValueError(f"{path} carries no openimagen parameters (PNG text {PNG_KEY!r}); "
                         "only PNGs written by `openimagen generate`, `edit` or `upscale` can be reproduced")
    try:
        request = json.loads(text)["request"]
        kind = EditRequest if request.get("format") == EDIT_FORMAT else GenerateRequest
        return kind.from_json(request)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: its openimagen parameters are damaged ({e})") from None


def _slug(text: str, n: int = 40) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"
