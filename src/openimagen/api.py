"""Requests: what a user asks for, as JSON, and the one function that runs it.

    request = GenerateRequest(prompt=["a red circle above a blue square"], seed=3)
    result = run(request)                      # loads request.model (None: the bundled model)
    write_pngs(result, "out/")                 # every PNG carries result.request as PNG text

`run` resolves every default from the model (steps, guidance, sampler, noise level and size per stage)
and returns the fully resolved request with the images, so running that request again gives the same
images bit for bit. The CLI maps its arguments to a request and calls these; a server does the same.

    edit = EditRequest(mode="inpaint", image="photo.png", mask="mask.png", prompt=["a blue star"])
    write_pngs(run_edit(edit), "out/")         # edit_request.py; the PNG holds the files' sha256 too
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
from .precision import CHOICES as PRECISION_CHOICES, resolve_precision

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
    sr: str | list[str] | None = None  # an IF stage II to run after an IF stage I `model` (then the x4 upscaler)
    precision: str = "auto"            # weights dtype: auto (the machine's fastest: precision.py) | fp32 | bf16 | fp16
    lora: tuple[str, ...] = ()         # LoRA adapters "PATH[:scale]" on the model (lora.py)
    expand: bool | None = None         # rewrite prompts as the model's training captions (prompt_expansion.py);
                                       # None: if the model declares an expansion

    def __post_init__(self):
        normalise(self, PER_STAGE)
        if self.expand is not None and not isinstance(self.expand, bool):
            raise ValueError(f"expand={self.expand!r} must be true, false or null (the model's default)")
        if isinstance(self.lora, str) or not all(isinstance(x, str) for x in self.lora):
            raise ValueError(f"lora={self.lora!r} must be a list of 'PATH[:scale]' strings")
        object.__setattr__(self, "lora", tuple(self.lora))

    def to_json(self) -> str:
        return json.dumps({"format": REQUEST_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "GenerateRequest":
        return from_json(cls, text, REQUEST_FORMAT, "a generation request", ("prompt",))


def normalise(request, per_stage: tuple[str, ...]) -> None:
    """What every request checks: one spelling for prompts and per-stage lists, a known precision, a seed."""
    prompt = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
    object.__setattr__(request, "prompt", prompt)
    for name in (*per_stage, "sr"):  # JSON has lists, callers may pass tuples: one spelling
        v = getattr(request, name)
        if isinstance(v, tuple):
            object.__setattr__(request, name, list(v))
    if request.precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {request.precision!r}; choose one of {list(PRECISION_CHOICES)}")
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
    expanded: list[str] | None = None  # one per image row: the prompt as the model read it (prompt expansion)


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
        noise_level=[None if not c.lowres else float(c.noise_level if v is None else v)
                     for c, v in zip(cfgs, each["noise_level"])],
        height=[h for h, _ in sizes], width=[w for _, w in sizes], stop_at=n,
        expand=(getattr(cascade, "prompt_expansion", None) is not None) if request.expand is None else request.expand,
    )


def run(request: GenerateRequest, *, cascade=None, device: str = "cpu", offload: bool = False,
        progress: bool = True, callback=None) -> GenerateResult:
    """Generate what `request` asks for; `cascade` is a loaded model (default: load request.model).
    `callback(step)` sees every sampling step (`diffusion.Step`, with x0_hat); False cancels."""
    from . import preflight

    preflight.check_device(device)
    preflight.check_numbers(request)
    request = dataclasses.replace(request, precision=resolve_precision(request.precision, device))
    if cascade is None:
        from .load import load_model

        if request.model is None:
            preflight.vocabulary_warning(request.prompt)
        cascade = load_model(request.model, sr=request.sr, device="cpu" if offload else device,
                             dtype=PRECISIONS[request.precision], lora=request.lora)
    req = resolve(cascade, request)
    preflight.check_resolved(cascade, req, device)
    out = cascade.generate(
        req.prompt, negative_prompt=req.negative_prompt, num_images=req.num_images, steps=req.steps,
        guidance=req.guidance, sampler=req.sampler, noise_level=req.noise_level, height=req.height,
        width=req.width, seed=req.seed, stop_at=req.stop_at, device=device, offload=offload,
        progress=progress, callback=callback, expand=req.expand,
    )
    return GenerateResult(images=out.images, prompts=out.prompts, request=req, expanded=out.expanded)


# ----------------------------------------------------------------------------------------------
# PNGs that remember how they were made


def write_pngs(result: GenerateResult, out_dir: str | os.PathLike, *, stages: str = "all") -> list[Path]:
    """Write every image as `NN-<prompt>-stageK-<size>px.png` with the resolved request as PNG text;
    each file appears whole or not at all (written beside, then renamed)."""
    from PIL.PngImagePlugin import PngInfo

    from . import infotext
    from .data.transforms import to_pil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = json.loads(result.request.to_json())
    written = []
    for k, images in enumerate(result.images, start=result.first_stage):
        h, w = images.shape[-2:]
        res = f"{w}" if h == w else f"{w}x{h}"
        for i, (img, prompt) in enumerate(zip(to_pil(images), result.prompts)):
            read = result.expanded[i] if result.expanded is not None else None  # what the model read, if rewritten
            info = PngInfo()
            info.add_text(PNG_KEY, json.dumps({"request": request, "stage": k, "index": i, "version": __version__,
                                               **({"expanded_prompt": read} if read is not None else {})},
                                              sort_keys=True))
            info.add_text(infotext.PNG_KEY, infotext.infotext(request, prompt, k, img.size, __version__,
                                                              expanded=read))  # A1111's
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
        from .edit_request import EDIT_FORMAT, EditRequest

        request = json.loads(text)["request"]
        kind = EditRequest if request.get("format") == EDIT_FORMAT else GenerateRequest
        if kind is GenerateRequest:  # written before prompt expansion existed: the prompt was read as typed
            request.setdefault("expand", False)
        return kind.from_json(request)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: its openimagen parameters are damaged ({e})") from None


def _slug(text: str, n: int = 40) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


_EDITS = ("EditRequest", "run_edit", "resolve_edit", "EDIT_FORMAT")


def __getattr__(name: str):
    # Edit requests live in edit_request.py (which imports this module); callers find them here too.
    if name in _EDITS:
        from . import edit_request

        return getattr(edit_request, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
