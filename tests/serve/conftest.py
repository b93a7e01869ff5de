"""A real server on 127.0.0.1 (a free port, uvicorn in a thread) over a tiny random-weight cascade that
is also saved as a model folder, so `openimagen generate --from-png` can load what the server ran."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (pip install -e '.[serve]') is not installed")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm):
    """(folder, loaded cascade): 8 px -> 16 px, random weights, 3 DDIM steps per stage by default."""
    from openimagen.cascade import Cascade
    from openimagen.load import load_model

    c = Cascade.build(minilm, [("tiny", 8), ("tiny", 16)], steps=3, sampler="ddim")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output layers would make every image the same
        for p in c.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    folder = tmp_path_factory.mktemp("tiny-cascade")
    c.save_pretrained(folder)
    return str(folder), load_model(str(folder))


@pytest.fixture(scope="session")
def start_server(tiny_model):
    """start_server(out_dir, **settings) -> a running Server; every one is stopped at the end."""
    from openimagen.serve import Settings
    from serve_helpers import Server

    servers = []

    def start(out_dir, **kw):
        s = Server(Settings(out_dir=out_dir, **kw), tiny_model[0], tiny_model[1])
        servers.append(s)
        return s

    yield start
    for s in servers:
        if s.thread.is_alive():
            s.stop()
