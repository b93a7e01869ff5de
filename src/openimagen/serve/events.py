"""Listening to a job from the event loop: the SSE stream of its events, and waiting for its end
(the synchronous compatibility routes). Both wake on the worker's `publish`, never poll the model."""
from __future__ import annotations

import asyncio
import json


async def sse(job, request, last_id: int = 0, ping_s: float = 15.0):
    """`id:`/`event:`/`data:` per event (Last-Event-ID resumes), a `: ping` comment when idle, and the end
    of the stream after the job's final event."""
    loop, wake = asyncio.get_running_loop(), asyncio.Event()
    job.subscribe(loop, wake)
    try:
        yield "retry: 2000\n\n"
        while True:
            wake.clear()
            for seq, kind, data in job.events_after(last_id):
                last_id = seq
                yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
            if job.done and not job.events_after(last_id):
                return
            if await request.is_disconnected():
                return
            try:
                await asyncio.wait_for(wake.wait(), ping_s)
            except asyncio.TimeoutError:
                yield ": ping\n\n"
    finally:
        job.unsubscribe(loop, wake)


async def wait_done(job, request=None, queue=None, timeout: float | None = None) -> None:
    """Until the job ends. A client that goes away while waiting cancels its job (nobody would see it)."""
    loop, wake = asyncio.get_running_loop(), asyncio.Event()
    job.subscribe(loop, wake)
    t0 = loop.time()
    try:
        while not job.done:
            wake.clear()
            if job.done:
                break
            try:
                await asyncio.wait_for(wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if request is not None and queue is not None and not job.done and await request.is_disconnected():
                queue.cancel(job.id)
            if timeout is not None and loop.time() - t0 > timeout:
                raise TimeoutError(f"job {job.id} did not finish in {timeout} s")
    finally:
        job.unsubscribe(loop, wake)
