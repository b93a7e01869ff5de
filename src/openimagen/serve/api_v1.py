"""Our API (/api/v1): submit a job (202), follow it (SSE), cancel it by id, fetch its images; the queue,
the gallery, health and capabilities. FastAPI documents it at /docs and /openapi.json."""
from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from .events import sse
from .inputs import check_mask, check_prompt, decode_image, requests_for
from .jobs import Job

router = APIRouter(prefix="/api/v1")
PerStage = Any  # one value for every stage, or a list with one entry (or null) per stage


class JobBody(BaseModel):
    """A job: text-to-image, or an edit of an uploaded (base64) or gallery image."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["txt2img", "img2img", "inpaint", "outpaint", "upscale"] = "txt2img"
    prompt: str | list[str]
    negative_prompt: str | None = None
    seed: int | None = Field(None, description="null or -1: a random seed (reported in the result)")
    steps: PerStage = None
    guidance: PerStage = None
    sampler: PerStage = None
    noise_level: PerStage = None
    num_images: int = Field(1, ge=1, description="images per run (one batch)")
    batch_count: int = Field(1, ge=1, description="runs, with seeds seed, seed+1, ...")
    stop_at: int | None = Field(None, ge=1, description="run stages 0..stop_at-1 (1: cheap base candidates)")
    image: str | None = Field(None, description="base64 image (edits); never a URL")
    image_id: str | None = Field(None, description="a gallery image to edit or upscale, instead of `image`")
    mask: str | None = Field(None, description="base64 mask, the image's size: white = repaint")
    strength: PerStage = None
    extend: dict | None = None
    fill: str | None = None
    blend: str | None = None
    from_stage: int | None = None


def ctx(request: Request):
    return request.app.state.ctx


def build_job(body: JobBody, c) -> Job:
    prompt = check_prompt(body.prompt, c.settings)
    fields = dict(prompt=prompt, negative_prompt=body.negative_prompt, steps=body.steps, guidance=body.guidance,
                  sampler=body.sampler, noise_level=body.noise_level, num_images=body.num_images, stop_at=body.stop_at)
    if body.kind == "txt2img":
        for name in ("image", "image_id", "mask", "strength", "extend", "fill", "blend", "from_stage"):
            if getattr(body, name) is not None:
                raise ValueError(f"{name} is for edits; give kind img2img, inpaint, outpaint or upscale")
    else:
        fields.update(_edit_fields(body, c))
    reqs = requests_for(body.kind, fields, c.info, c.settings, batch_count=body.batch_count, seed=body.seed)
    return Job(kind=body.kind, requests=reqs)


def _edit_fields(body: JobBody, c) -> dict:
    if (body.image is None) == (body.image_id is None):
        raise ValueError(f"{body.kind} needs the image to work on: give `image` (base64) or `image_id` (gallery)")
    if body.image is not None:
        path, size, _ = decode_image(body.image, "image", c.settings)
    else:
        rec = c.gallery.get(body.image_id)
        if rec is None:
            raise ValueError(f"image_id {body.image_id!r} is not in the gallery")
        path, size = c.gallery.path(rec), (rec["width"], rec["height"])
    out = dict(image=str(path), strength=body.strength, extend=body.extend, fill=body.fill, blend=body.blend,
               from_stage=body.from_stage)
    if body.mask is not None:
        if body.kind not in ("inpaint", "upscale"):
            raise ValueError(f"mask is used by inpaint and upscale, not {body.kind}")
        mpath, msize, _ = decode_image(body.mask, "mask", c.settings)
        check_mask(mpath, msize, size)
        out["mask"] = str(mpath)
    return out


@router.post("/jobs", status_code=202)
async def submit(body: JobBody, request: Request):
    c = ctx(request)
    job = c.queue.submit(build_job(body, c))
    return JSONResponse(status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}"},
                        content={**job.to_dict(), "queue_position": c.queue.position(job),
                                 "seeds": [r.seed for r in job.requests]})


def _job(request: Request, job_id: str) -> Job:
    job = ctx(request).queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for a while; images stay in the gallery)")
    return job


@router.get("/jobs/{job_id}")
async def job_state(job_id: str, request: Request):
    job = _job(request, job_id)
    return {**job.to_dict(), "queue_position": ctx(request).queue.position(job)}


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request):
    job = _job(request, job_id)
    last = request.headers.get("last-event-id", "0")
    stream = sse(job, request, int(last) if last.isdigit() else 0, ctx(request).settings.sse_ping_s)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/preview.png")
async def job_preview(job_id: str, request: Request):
    """The latest x0_hat preview while the job runs; once it ends, its first image (a late <img> still
    gets a picture) or 204 (nothing was made). Previews are not kept past their job."""
    job = _job(request, job_id)
    preview = job.preview
    if preview is not None:
        return Response(preview, media_type="image/png", headers={"Cache-Control": "no-store"})
    if job.done and job.images:
        return RedirectResponse(job.images[0]["url"], status_code=303)
    return Response(status_code=204)


@router.post("/jobs/{job_id}/cancel")
@router.delete("/jobs/{job_id}")
async def job_cancel(job_id: str, request: Request):
    job = ctx(request).queue.cancel(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job.to_dict()


@router.get("/queue")
async def queue(request: Request):
    return ctx(request).queue.snapshot()


@router.get("/gallery")
async def gallery(request: Request, limit: int = 50, before: float | None = None):
    return {"images": ctx(request).gallery.page(max(1, min(limit, 500)), before)}


def _image(request: Request, image_id: str):
    g = ctx(request).gallery
    rec = g.get(image_id)
    if rec is None:
        raise HTTPException(404, f"no image {image_id!r} in the gallery")
    return g.path(rec)


@router.get("/images/{image_id}.png")
async def image_file(image_id: str, request: Request):
    return Response(_image(request, image_id).read_bytes(), media_type="image/png",
                    headers={"Cache-Control": "max-age=31536000, immutable"})


@router.get("/images/{image_id}/parameters")
async def image_parameters(image_id: str, request: Request):
    from PIL import Image

    with Image.open(_image(request, image_id)) as im:
        return png_parameters(dict(getattr(im, "text", {})))


class PngInfoBody(BaseModel):
    image: str


@router.post("/png-info")
async def png_info(body: PngInfoBody, request: Request):
    from PIL import Image
    import io

    _, _, raw = decode_image(body.image, "image", ctx(request).settings, save=False)
    with Image.open(io.BytesIO(raw)) as im:
        return png_parameters(dict(getattr(im, "text", {})))


def png_parameters(text: dict) -> dict:
    """Ours (the full request) and A1111's infotext (parsed), whichever the PNG has."""
    from .. import api, infotext

    out = {"request": None, "parameters": text.get(infotext.PNG_KEY), "parsed": None}
    if api.PNG_KEY in text:
        try:
            out["request"] = json.loads(text[api.PNG_KEY])["request"]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    if out["parameters"]:
        out["parsed"] = infotext.parse(out["parameters"])
    return out


@router.get("/health")
async def health(request: Request):
    c = ctx(request)
    snap = c.queue.snapshot()
    return {"status": "ok", "version": __version__, "model": c.info.title, "running": len(snap["running"]),
            "pending": len(snap["pending"]), "gallery": len(c.gallery)}


@router.get("/capabilities")
async def capabilities(request: Request):
    from ..diffusion import IF_RESPACINGS, SAMPLERS

    c = ctx(request)
    stages = c.info.stages()
    kinds = ["txt2img", "img2img", "inpaint", "outpaint"] + (["upscale"] if len(stages) > 1 else [])
    return {"version": __version__, "models": [{"name": c.info.title, "stages": stages,
                                                 "sizes": [s["resolution"] for s in stages]}],
            "kinds": kinds, "samplers": sorted(SAMPLERS), "named_steps": sorted(IF_RESPACINGS),
            "devices": list(c.settings.devices), "limits": c.settings.limits(),
            "token_required": bool(c.settings.token)}
