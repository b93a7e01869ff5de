"""The FastAPI app: the model loaded once per device, the queue, the gallery, the routes and the page."""
from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .gallery import Gallery
from .inputs import ModelInfo
from .jobs import JobQueue, QueueFull
from .security import Guard
from .settings import Settings

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("openimagen.serve")


@dataclass
class Context:
    settings: Settings
    info: ModelInfo
    queue: JobQueue
    gallery: Gallery


def create_app(settings: Settings, *, model: str | None = None, sr: str | None = None, precision: str = "auto",
               loaded: list | None = None) -> FastAPI:
    """`model`/`sr` as `openimagen generate` takes them (None: the bundled model); `loaded` = already loaded
    copies, one per device in settings.devices (tests, or a caller that has the model in memory), in
    `precision`. "auto" is resolved once, for the first device, so every copy and every PNG agree."""
    from .. import api
    from ..load import load_model
    from ..precision import resolve_precision

    precision = resolve_precision(precision, settings.devices[0])
    if loaded is None:
        dtype = api.PRECISIONS[precision]
        loaded = [load_model(model, sr=sr, device=dev, dtype=dtype) for dev in settings.devices]
    if len(loaded) != len(settings.devices):
        raise ValueError(f"{len(loaded)} loaded models for {len(settings.devices)} devices; give one per device")
    gallery = Gallery(settings.out_dir)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        app.state.ctx.queue.stop()

    quiet = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:  # FastAPI >= 0.16x: never export, even if env asks
        quiet["telemetry"] = {"auto_configure": False, "tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="openimagen", version=__version__, lifespan=lifespan, **quiet,
                  description="Local text-to-image with a cascaded diffusion model. Our API is /api/v1; "
                              "A1111's subset is /sdapi/v1; OpenAI's image generation is /v1/images/generations.")
    app.state.ctx = Context(settings, ModelInfo(model, sr, loaded[0], precision),
                            JobQueue(settings, gallery, list(zip(settings.devices, loaded))), gallery)

    from . import api_v1, compat_a1111, compat_openai

    app.include_router(api_v1.router)
    app.include_router(compat_a1111.router)
    app.include_router(compat_openai.router)
    _errors(app)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, settings=settings)
    return app


def _errors(app: FastAPI) -> None:
    """Every error is JSON {"error": code, "detail": what to fix}; never a traceback."""

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, e: ValueError):
        if request.url.path.startswith("/v1/"):
            return _openai_error(400, str(e))
        return JSONResponse(status_code=400, content={"error": "bad_request", "detail": str(e)})

    @app.exception_handler(QueueFull)
    async def full(request: Request, e: QueueFull):
        content = {"error": "queue_full", "detail": str(e), "max_queue": e.max_queue}
        if request.url.path.startswith("/v1/"):
            content = {"error": {"message": str(e), "type": "rate_limit_error", "code": "queue_full", "param": None}}
        return JSONResponse(status_code=429, headers={"Retry-After": str(e.retry_after)}, content=content)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if request.url.path.startswith("/v1/"):
            return _openai_error(e.status_code, str(e.detail))
        return JSONResponse(status_code=e.status_code, content={"error": _code(e.status_code), "detail": e.detail},
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in err["loc"] if p != "body"), "message": err["msg"]}
                  for err in e.errors()]
        text = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
        if request.url.path.startswith("/v1/"):
            return _openai_error(400, text)
        return JSONResponse(status_code=422, content={"error": "invalid_request", "detail": text, "errors": errors})

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(status_code=500, content={"error": "internal", "detail": f"{type(e).__name__}: {e}"})


def _openai_error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error",
                                                               "param": None, "code": None}})


def _code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
            413: "body_too_large", 503: "unavailable"}.get(status, f"http_{status}")
