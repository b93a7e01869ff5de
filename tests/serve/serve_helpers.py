"""Helpers of the serve tests: a real uvicorn server in a thread, and reading an SSE stream."""
from __future__ import annotations

import socket
import threading
import time


class Server:
    """uvicorn in a daemon thread on a socket we bound (port 0: a free one)."""

    def __init__(self, settings, model_dir, loaded):
        import uvicorn

        from openimagen.serve import create_app

        # `loaded` is in fp32, so say so: "auto" would record bf16 on a bf16 CPU while the copy computes in fp32
        self.app = create_app(settings, model=model_dir, loaded=[loaded] * len(settings.devices), precision="fp32")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    @property
    def queue(self):
        return self.app.state.ctx.queue

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the server did not stop"


def sse_events(client, path, *, until=("completed", "failed", "cancelled"), on_event=None):
    """[(event, data)] from an SSE stream until one of `until`; on_event(event, data) may act mid-stream."""
    import json

    out, kind = [], None
    with client.stream("GET", path, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                out.append((kind, data))
                if on_event is not None:
                    on_event(kind, data)
                if kind in until:
                    break
    return out
