"""Running one job on one worker: the library call with a callback for progress, previews and cancel,
then the PNGs to disk and into the gallery. Runs on a worker thread, never on the event loop."""
from __future__ import annotations

import logging
import time

from .. import api, options
from ..edit_request import EditRequest, resolve_edit, resolve_inputs
from ..sampling import GenerationCancelled
from .jobs import Job, png_bytes

log = logging.getLogger("openimagen.serve")


def run_job(job: Job, model, device: str, settings, gallery) -> None:
    job.status, job.started, job.device = "running", time.time(), device
    job.publish("started", job.to_dict())
    try:
        plan = [_work_plan(model, req) for req in job.requests]
        total = sum(w for p in plan for _, _, w in p) or 1.0
        done_before = 0.0
        for part, req in enumerate(job.requests):
            if job.cancel_requested.is_set():
                raise GenerationCancelled(0, 0)
            weights = {stage: w / n for stage, n, w in plan[part]}  # work of one step of each stage
            run = api.run_edit if isinstance(req, EditRequest) else api.run
            result = run(req, cascade=model, device=device, progress=False,
                         callback=_callback(job, settings, weights, done_before, total))
            folder = settings.out_dir / "jobs" / job.id / f"{part:02d}"
            paths = api.write_pngs(result, folder)
            last = result.first_stage + len(result.images) - 1
            finals = [p for p in paths if f"-stage{last}-" in p.name]
            job.images += gallery.add(job, finals, req=result.request, part=part)
            done_before += sum(w for _, _, w in plan[part])
        job.finish("completed")
    except GenerationCancelled as e:
        job.finish("cancelled", {"code": "cancelled", "message": f"cancelled at stage {e.stage}, step {e.step}"})
    except (ValueError, FileNotFoundError) as e:
        job.finish("failed", {"code": "bad_input", "message": str(e)})
    except Exception as e:
        if "out of memory" in str(e).lower():
            _free_memory(device)
            job.finish("failed", {"code": "out_of_memory", "message": str(e),
                                  "hint": "fewer images per job, a smaller size, or --precision bf16"})
        else:
            log.exception("job %s failed", job.id)
            job.finish("failed", {"code": "internal", "message": f"{type(e).__name__}: {e}"})


def _callback(job: Job, settings, weights: dict, done_before: float, total: float):
    state = {"done": done_before, "t0": time.perf_counter()}

    def callback(step):
        if job.cancel_requested.is_set():
            return False  # the sampler stops here: GenerationCancelled
        state["done"] += weights.get(step.stage, 0.0)
        job.progress = min(state["done"] / total, 0.999)
        elapsed = time.perf_counter() - state["t0"]
        fraction = (state["done"] - done_before) / max(total - done_before, 1e-9)
        job.eta_s = elapsed / fraction - elapsed if fraction > 0 else None  # A1111's formula, work-weighted
        job.stage, job.step, job.steps = step.stage, step.i + 1, step.num_steps
        preview = None
        if step.last or step.i % settings.preview_every == 0:
            job.preview = _preview(step.x0_hat, settings.preview_size)
            job.preview_seq += 1
            preview = f"/api/v1/jobs/{job.id}/preview.png?n={job.preview_seq}"
        job.publish("progress", {"stage": step.stage, "step": step.i + 1, "steps": step.num_steps,
                                 "progress": round(job.progress, 4),
                                 "eta_s": None if job.eta_s is None else round(job.eta_s, 2), "preview_url": preview})
        return None

    return callback


def _work_plan(model, req) -> list[tuple[int, int, float]]:
    """[(stage, steps, work)] for the stages a request runs; work = steps x pixels, the weight of progress."""
    try:
        if isinstance(req, EditRequest):
            r = resolve_edit(model, resolve_inputs(req))
            first = r.from_stage or 0
            strength = r.strength or [None] * r.stop_at
        else:
            r, first, strength = api.resolve(model, req), 0, [None] * (req.stop_at or len(model.stages))
        out = []
        for k in range(first, r.stop_at):
            n = len(options.timesteps(model.stages[k], r.steps[k]))
            if strength[k] is not None:
                n = max(1, min(int(n * strength[k]), n))
            res = model.stages[k].resolution
            out.append((k, n, float(n * res * res)))
        return out
    except Exception:  # the run itself will report what is wrong; progress just goes unweighted
        return []


def _preview(x0_hat, size: int) -> bytes:
    from ..data.transforms import to_pil

    img = to_pil(x0_hat[:1].detach().float().clamp(-1, 1).cpu())[0]
    img.thumbnail((size, size))
    return png_bytes(img)


def _free_memory(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
