"""OpenAI's image generation (`POST /v1/images/generations`, `GET /v1/models`), shaped as OpenAI's
clients parse it: `{created, data: [{b64_json}]}` (or `url` with response_format="url"); unknown fields
(quality, style, user, ...) ignored; errors as `{"error": {"message", "type", "param", "code"}}`."""
from __future__ import annotations

import asyncio
import re
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .compat_common import encoded_images, plan_size, run_sync
from .inputs import check_prompt, requests_for
from .jobs import Job

router = APIRouter(prefix="/v1", tags=["OpenAI compatibility"])


class Generations(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    n: int = Field(1, ge=1, le=10)
    size: str | None = "auto"
    response_format: str | None = "b64_json"
    model: str | None = None


@router.post("/images/generations")
async def generations(body: Generations, request: Request):
    c = request.app.state.ctx
    res = [s.resolution for s in c.info.model.stages]
    if body.size in (None, "auto"):
        width = height = res[-1]
    else:
        m = re.fullmatch(r"(\d+)x(\d+)", body.size)
        if not m or not all(8 <= int(v) <= 4096 for v in m.groups()):
            raise ValueError(f"size {body.size!r}: write WIDTHxHEIGHT (e.g. 1024x1024, each 8..4096) or auto")
        width, height = int(m[1]), int(m[2])
    if body.response_format not in (None, "b64_json", "url"):
        raise ValueError(f"response_format {body.response_format!r}: choose b64_json or url")
    stop_at, _ = plan_size(res, width, height)
    reqs = requests_for("txt2img", dict(prompt=check_prompt(body.prompt, c.settings), stop_at=stop_at, num_images=1),
                        c.info, c.settings, batch_count=body.n, seed=-1)
    job = Job(kind="txt2img", requests=reqs, meta={"stop_at": stop_at})
    await run_sync(c, job, request)
    if job.status != "completed":
        raise ValueError(f"the job {job.status}: {(job.error or {}).get('message')}")
    if body.response_format == "url":
        base = str(request.base_url).rstrip("/")
        data = [{"url": base + r["url"], "revised_prompt": body.prompt} for r in job.images]
    else:
        images, _, _ = await asyncio.to_thread(encoded_images, c, job, width, height)
        data = [{"b64_json": b, "revised_prompt": body.prompt} for b in images]
    return {"created": int(job.created), "data": data}


@router.get("/models")
async def models(request: Request):
    c = request.app.state.ctx
    return {"object": "list", "data": [{"id": c.info.title, "object": "model", "created": 0, "owned_by": "openimagen"}]}
