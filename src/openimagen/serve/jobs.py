"""Jobs: a bounded FIFO queue and one worker thread per device, each with its own copy of the model.

A job is one or more library requests run one after another (A1111's "image i gets seed + i" is a job of
several requests); its images go to disk (api.write_pngs, so every PNG reproduces itself) and into the
gallery index before the job says "completed". The event loop never waits on the model: submit and
cancel take a lock for microseconds, and progress reaches async listeners through `call_soon_threadsafe`.

Memory is bounded: a queued job holds its request (uploaded images are already files), a running job
its latest preview only (dropped when it ends), every job a short event log (a slow listener skips to
the newest events instead of growing a backlog), and at most `jobs_in_memory` finished job records.
"""
from __future__ import annotations

import collections
import io
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

log = logging.getLogger("openimagen.serve")
DONE = ("completed", "failed", "cancelled")
EVENT_LOG = 64  # events kept per job for late or reconnecting listeners (Last-Event-ID)


class QueueFull(Exception):
    def __init__(self, max_queue: int, retry_after: int):
        super().__init__(f"the queue is full ({max_queue} jobs waiting); try again in {retry_after} s")
        self.max_queue, self.retry_after = max_queue, retry_after


@dataclass(eq=False)
class Job:
    kind: str                          # txt2img | img2img | inpaint | outpaint | upscale
    requests: list                     # api.GenerateRequest / EditRequest, run in order
    meta: dict = field(default_factory=dict)  # what a compatibility layer wants to say about it (sizes, aliases)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    created: float = field(default_factory=time.time)
    status: str = "queued"
    started: float | None = None
    finished: float | None = None
    device: str | None = None
    progress: float = 0.0
    stage: int | None = None
    step: int = 0
    steps: int = 0
    eta_s: float | None = None
    error: dict | None = None
    images: list = field(default_factory=list)       # gallery records of the finished images
    preview: bytes | None = None                     # latest x0_hat preview (PNG), while running only
    preview_seq: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._events: collections.deque = collections.deque(maxlen=EVENT_LOG)
        self._seq = 0
        self._waiters: set = set()
        self.cancel_requested = threading.Event()

    @property
    def done(self) -> bool:
        return self.status in DONE

    # -- events ------------------------------------------------------------------------------------

    def publish(self, kind: str, data: dict) -> None:
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, kind, data))
            waiters = list(self._waiters)
        for loop, event in waiters:  # wake async listeners from any thread
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # its loop closed: the listener is gone
                self._waiters.discard((loop, event))

    def events_after(self, seq: int) -> list[tuple[int, str, dict]]:
        with self._lock:
            return [e for e in self._events if e[0] > seq]

    def subscribe(self, loop, event) -> None:
        with self._lock:
            self._waiters.add((loop, event))

    def unsubscribe(self, loop, event) -> None:
        with self._lock:
            self._waiters.discard((loop, event))

    def finish(self, status: str, error: dict | None = None) -> None:
        self.status, self.error, self.finished = status, error, time.time()
        self.preview, self.eta_s = None, 0.0 if status == "completed" else None
        if status == "completed":
            self.progress = 1.0
        self.publish(status, self.to_dict())

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "created": self.created,
                "started": self.started, "finished": self.finished, "device": self.device,
                "progress": round(self.progress, 4), "stage": self.stage, "step": self.step, "steps": self.steps,
                "eta_s": None if self.eta_s is None else round(self.eta_s, 2), "error": self.error,
                "prompt": self.requests[0].prompt[0] if self.requests else None,
                "images": [{k: r[k] for k in ("id", "url", "seed", "width", "height", "stage")} for r in self.images],
                "events_url": f"/api/v1/jobs/{self.id}/events", "result_url": f"/api/v1/jobs/{self.id}"}


class JobQueue:
    """Pending jobs in order; `workers` = [(device, model)], one thread each, taking the next job."""

    def __init__(self, settings, gallery, workers: list[tuple[str, object]]):
        from .runner import run_job

        self.settings, self.gallery, self._run_job = settings, gallery, run_job
        self._cond = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._running: dict[int, Job] = {}  # worker index -> its job
        self._stopping = False
        self._run_times: collections.deque[float] = collections.deque(maxlen=20)
        self._threads = [threading.Thread(target=self._work, args=(k, dev, model), name=f"openimagen-worker-{k}-{dev}",
                                          daemon=True) for k, (dev, model) in enumerate(workers)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise QueueFull(self.settings.max_queue, 5)
            if len(self._pending) >= self.settings.max_queue:
                raise QueueFull(self.settings.max_queue, self._retry_after())
            self._pending.append(job)
            self._remember(job)
            position = len(self._pending)
            self._cond.notify()
        job.publish("queued", {"position": position, **job.to_dict()})
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Idempotent: a queued job leaves the queue now, a running one stops after its current step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            queued = job in self._pending
            if queued:
                self._pending.remove(job)
            job.cancel_requested.set()
        if queued:
            job.finish("cancelled")
        return job

    def cancel_running(self) -> list[Job]:
        with self._cond:
            jobs = list(self._running.values())
        for job in jobs:
            job.cancel_requested.set()
        return jobs

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        with self._cond:
            return self._pending.index(job) + 1 if job in self._pending else None

    def snapshot(self) -> dict:
        with self._cond:
            return {"running": [j.to_dict() for j in self._running.values()],
                    "pending": [j.to_dict() for j in self._pending], "max_queue": self.settings.max_queue}

    def running(self) -> list[Job]:
        with self._cond:
            return list(self._running.values())

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, cancel the queued ones and the running ones (at their next step), join."""
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), collections.deque()
            for job in self._running.values():
                job.cancel_requested.set()
            self._cond.notify_all()
        for job in pending:
            job.finish("cancelled", {"code": "shutdown", "message": "the server stopped before this job ran"})
        for t in self._threads:
            t.join(timeout)

    # -- workers -----------------------------------------------------------------------------------

    def _work(self, worker: int, device: str, model) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._running[worker] = job
            t0 = time.perf_counter()
            try:
                self._run_job(job, model, device, self.settings, self.gallery)
            except Exception as e:  # the runner reports failures itself; this is a bug in it
                log.exception("job %s crashed the runner", job.id)
                if not job.done:
                    job.finish("failed", {"code": "internal", "message": f"{type(e).__name__}: {e}"})
            finally:
                with self._cond:
                    self._running.pop(worker, None)
                    self._run_times.append(time.perf_counter() - t0)

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > self.settings.jobs_in_memory:  # drop the oldest finished record
            old = next((k for k, j in self._jobs.items() if j.done), None)
            if old is None:
                break
            del self._jobs[old]

    def _retry_after(self) -> int:
        mean = sum(self._run_times) / len(self._run_times) if self._run_times else 5.0
        return max(1, int(mean * max(1, len(self._pending)) / max(1, len(self._threads)) + 0.999))


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
