"""The AUTOMATIC1111 subset that scripts use (/sdapi/v1), shaped as its clients parse it (e.g. webuiapi):
unknown fields ignored (and listed in `info`), plain base64 images, `info` a JSON *string*, seed -1 =
random with the seeds used reported, image i of a call made with seed + i. Synchronous: the request
waits (asynchronously) for its job; a client that goes away cancels it. A full queue is a 429.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import __version__
from .compat_common import encoded_images, plan_size, run_sync
from .inputs import check_mask, check_prompt, decode_image, inverted_mask, requests_for
from .jobs import Job

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 compatibility"])
# A1111 names -> ours; None = the model's own sampler (A1111's Euler samplers have no twin in a cascade)
SAMPLER_ALIASES = {"Euler a": None, "Euler": None, "DDIM": "ddim", "DDPM": "ddpm", "DPM++ 2M": "dpmpp_2m",
                   "DPM++ 2M Karras": "dpmpp_2m"}


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int = 512
    height: int = 512
    send_images: bool = True


class Img2Img(Txt2Img):
    init_images: list[str] = []
    mask: str | None = None
    denoising_strength: float = 0.75
    inpainting_mask_invert: int = 0


USED = set(Img2Img.model_fields)


def _body(cls, raw):
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def _sampler(body) -> tuple[str | None, str | None]:
    """(our sampler or None, the name the client asked for)."""
    from ..diffusion import SAMPLERS

    name = body.sampler_name or body.sampler_index
    if name is None or name in SAMPLERS:
        return name, name
    if name in SAMPLER_ALIASES:
        return SAMPLER_ALIASES[name], name
    raise HTTPException(400, f"Sampler not found: {name!r}; choose one of {sorted(SAMPLERS) + list(SAMPLER_ALIASES)}")


async def _generate(request: Request, cls, kind_of):
    c = request.app.state.ctx
    raw = await request.json()
    if not isinstance(raw, dict):
        raise ValueError("the body must be a JSON object")
    body = _body(cls, raw)
    for name, v in (("width", body.width), ("height", body.height)):
        if not 8 <= v <= 4096:
            raise ValueError(f"{name} must be in 8..4096, got {v}")
    sampler, asked = _sampler(body)
    stop_at, native = plan_size([s.resolution for s in c.info.model.stages], body.width, body.height)
    fields = dict(prompt=check_prompt(body.prompt, c.settings), negative_prompt=body.negative_prompt or None,
                  steps=None if body.steps is None else [body.steps] + [None] * (len(c.info.model.stages) - 1),
                  guidance=None if body.cfg_scale is None else [body.cfg_scale] + [None] * (len(c.info.model.stages) - 1),
                  sampler=sampler, stop_at=stop_at, num_images=1)
    kind = kind_of(body, fields, c)
    count = body.batch_size * body.n_iter
    reqs = requests_for(kind, fields, c.info, c.settings, batch_count=count, seed=body.seed)
    job = Job(kind=kind, requests=reqs, meta={"stop_at": stop_at})
    await run_sync(c, job, request)
    if job.status == "failed":
        status = 400 if job.error["code"] == "bad_input" else 500
        return JSONResponse(status_code=status, content={"error": job.error["code"], "detail": job.error["message"]})
    images, texts, notes = await asyncio.to_thread(encoded_images, c, job, body.width, body.height)
    seeds = [r["seed"] for r in job.images]
    ignored = sorted(k for k in raw if k not in USED)
    info = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(images), "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(images), "seed": reqs[0].seed, "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * len(images), "subseed_strength": 0, "width": body.width,
        "height": body.height, "sampler_name": asked or c.info.model.stages[0].config.sampler,
        "cfg_scale": body.cfg_scale, "steps": body.steps, "batch_size": body.batch_size, "n_iter": body.n_iter,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": c.info.title, "sd_model_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": getattr(body, "denoising_strength", None),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": texts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": f"openimagen {__version__}",
        "openimagen": {"job": job.id, "status": job.status, "native_size": native, "stages_run": stop_at,
                       "size_note": next((n for n in notes if n), None), "ignored_fields": ignored,
                       "sampler": sampler or "the model's own" + (f" (for {asked!r})" if asked else ""),
                       "images": [r["url"] for r in job.images]},
    }
    return {"images": images if body.send_images else [], "parameters": raw, "info": json.dumps(info)}


def _txt2img_kind(body, fields, c) -> str:
    return "txt2img"


def _img2img_kind(body: Img2Img, fields: dict, c) -> str:
    if not body.init_images:
        raise ValueError("img2img needs init_images: a list with one base64 image")
    path, size, _ = decode_image(body.init_images[0], "init_images[0]", c.settings)
    fields.update(image=str(path), strength=body.denoising_strength)
    if not body.mask:
        return "img2img"
    mpath, msize, _ = decode_image(body.mask, "mask", c.settings)
    if body.inpainting_mask_invert:
        mpath = inverted_mask(mpath)
    check_mask(mpath, msize, size)
    fields["mask"] = str(mpath)
    return "inpaint"


@router.post("/txt2img")
async def txt2img(request: Request):
    return await _generate(request, Txt2Img, _txt2img_kind)


@router.post("/img2img")
async def img2img(request: Request):
    return await _generate(request, Img2Img, _img2img_kind)


@router.get("/progress")
async def progress(request: Request, skip_current_image: bool = False):
    c = request.app.state.ctx
    snap_running = c.queue.running()
    job = snap_running[0] if snap_running else None
    pending = len(c.queue.snapshot()["pending"])
    state = {"skipped": False, "interrupted": bool(job and job.cancel_requested.is_set()), "job": job.id if job else "",
             "job_count": pending + len(snap_running), "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0,
             "sampling_step": job.step if job else 0, "sampling_steps": job.steps if job else 0}
    preview = job.preview if job else None
    return {"progress": round(job.progress, 4) if job else 0.0, "eta_relative": (job.eta_s or 0.0) if job else 0.0,
            "state": state, "current_image": None if skip_current_image or preview is None
            else base64.b64encode(preview).decode("ascii"),
            "textinfo": f"stage {job.stage}, step {job.step}/{job.steps}" if job and job.stage is not None else None,
            "current_task": job.id if job else None}


@router.post("/interrupt")
async def interrupt(request: Request):
    request.app.state.ctx.queue.cancel_running()
    return {}


@router.post("/skip")
async def skip(request: Request):
    request.app.state.ctx.queue.cancel_running()
    return {}


@router.get("/options")
async def get_options(request: Request):
    c = request.app.state.ctx
    return {"sd_model_checkpoint": c.info.title, "samples_format": "png", "sd_checkpoint_hash": None}


@router.post("/options")
async def set_options(request: Request):
    c = request.app.state.ctx
    raw = await request.json() if int(request.headers.get("content-length") or 0) else {}
    want = raw.get("sd_model_checkpoint") if isinstance(raw, dict) else None
    if want is not None and want != c.info.title:
        raise ValueError(f"this server runs one model, {c.info.title!r}; restart `openimagen serve --model ...` "
                         f"to serve {want!r}")
    return {}


@router.get("/sd-models")
async def sd_models(request: Request):
    c = request.app.state.ctx
    return [{"title": c.info.title, "model_name": c.info.title, "hash": None, "sha256": None,
             "filename": c.info.name or "bundled", "config": None}]


@router.get("/samplers")
async def samplers():
    from ..diffusion import SAMPLERS

    ours = [{"name": n, "aliases": [a for a, v in SAMPLER_ALIASES.items() if v == n], "options": {}} for n in SAMPLERS]
    return ours + [{"name": a, "aliases": [], "options": {"maps_to": "the model's own sampler"}}
                   for a, v in SAMPLER_ALIASES.items() if v is None]


@router.get("/schedulers")
async def schedulers():
    return []


@router.get("/scripts")
async def scripts():
    return {"txt2img": [], "img2img": []}


@router.get("/upscalers")
async def upscalers():
    return []
