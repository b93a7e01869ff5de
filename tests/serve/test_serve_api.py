"""Our HTTP API against a real server on 127.0.0.1: submit -> SSE progress -> a PNG that `--from-png`
reproduces bit for bit; cancel by id mid-run; a full queue answers 429; bad requests answer 4xx JSON
naming the problem; a token is enforced; the gallery survives a restart."""
import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from openimagen import api
from openimagen.cli import main

LONG = {"steps": [400, 400]}  # ~10 s on the tiny model: long enough to cancel or queue behind


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    return start_server(tmp_path_factory.mktemp("gallery"), max_queue=2, preview_every=2)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_submit_streams_progress_and_the_png_reproduces_bitwise(client, tmp_path):
    from serve_helpers import sse_events

    r = client.post("/api/v1/jobs", json={"prompt": "a red circle above a blue square", "seed": 5, "steps": 4})
    assert r.status_code == 202 and r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
    job = r.json()
    events = sse_events(client, job["events_url"])
    kinds = [k for k, _ in events]
    assert kinds[0] in ("queued", "started") and kinds[-1] == "completed"
    progress = [d for k, d in events if k == "progress"]
    assert [(d["stage"], d["step"]) for d in progress] == [(s, i) for s in (0, 1) for i in range(1, 5)]  # one by one
    assert all(a["progress"] < b["progress"] for a, b in zip(progress, progress[1:]))
    assert progress[0]["preview_url"] and progress[-1]["preview_url"]  # step 1 and the last carry a preview
    done = events[-1][1]
    assert done["status"] == "completed" and len(done["images"]) == 1 and done["images"][0]["width"] == 16
    png = client.get(done["images"][0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    got = tmp_path / "got.png"
    got.write_bytes(png.content)
    im = Image.open(got)
    assert "Seed: 5" in im.text["parameters"] and "Steps: 4" in im.text["parameters"]  # A1111's infotext too
    stored = api.request_from_png(got)
    assert stored.seed == 5 and stored.steps == [4, 4]
    assert main(["-q", "generate", "--from-png", str(got), "--out", str(tmp_path / "again")]) == 0
    again = next((tmp_path / "again").glob("*-stage1-16px.png"))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(im))


def test_cancel_mid_run_stops_within_a_step_and_only_that_job(client):
    from serve_helpers import sse_events

    a = client.post("/api/v1/jobs", json={"prompt": "a red circle", "seed": 1, **LONG}).json()
    b = client.post("/api/v1/jobs", json={"prompt": "a blue square", "seed": 2, "steps": 2}).json()
    sent = {}

    def on_event(kind, data):
        if kind == "progress" and data["step"] == 3 and not sent:
            sent["t"] = time.perf_counter()
            r = client.post(f"/api/v1/jobs/{a['id']}/cancel")
            assert r.status_code == 200
            sent["at"] = (r.json()["stage"], r.json()["step"])  # where the job was when the flag went up

    events = sse_events(client, a["events_url"], on_event=on_event)
    latency = time.perf_counter() - sent["t"]
    assert events[-1][0] == "cancelled" and events[-1][1]["error"]["code"] == "cancelled"
    # Steps may run while the cancel request travels (a loaded 2-core machine took 3 of them), so count from
    # the step the job had reached when the server set the flag: at most the one step then in flight follows.
    stage, accepted = sent["at"]
    steps_after = [d["step"] for k, d in events if k == "progress" and d["stage"] == stage and d["step"] > accepted]
    assert stage == 0 and len(steps_after) <= 1 and latency < 5  # the flag is read after every step
    assert sse_events(client, b["events_url"])[-1][0] == "completed"  # the next job still runs
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_queue_full_answers_429_with_retry_after(client, server):
    ids = []
    try:
        running = client.post("/api/v1/jobs", json={"prompt": "a red circle", **LONG}).json()
        ids.append(running["id"])
        deadline = time.monotonic() + 10
        while client.get(f"/api/v1/jobs/{running['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for _ in range(2):  # max_queue=2 waiting
            r = client.post("/api/v1/jobs", json={"prompt": "a red circle", **LONG})
            assert r.status_code == 202
            ids.append(r.json()["id"])
        full = client.post("/api/v1/jobs", json={"prompt": "a red circle", **LONG})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"] == "queue_full" and full.json()["max_queue"] == 2
        snap = client.get("/api/v1/queue").json()
        assert [j["id"] for j in snap["running"]] == ids[:1] and [j["id"] for j in snap["pending"]] == ids[1:]
    finally:
        for i in reversed(ids):  # queued ones leave at once, the running one at its next step
            client.post(f"/api/v1/jobs/{i}/cancel")
    deadline = time.monotonic() + 10
    while client.get("/api/v1/queue").json()["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert all(client.get(f"/api/v1/jobs/{i}").json()["status"] == "cancelled" for i in ids)


def _mask(w, h, box):
    m = Image.new("L", (w, h), 0)
    m.paste(255, box)
    return _png_b64(m)


IMG = Image.new("RGB", (16, 16), (200, 30, 30))


@pytest.mark.parametrize("body,headers,status,words", [
    ({"prompt": "x", "sampler": "euler_magic"}, None, 400, "unknown sampler 'euler_magic'"),
    ({"prompt": "x", "steps": -3}, None, 400, "steps must be a whole number in 1..1000"),
    ({"prompt": "x", "guidence": 3}, None, 422, "guidence"),
    ({"prompt": "   "}, None, 400, "prompt is empty"),
    ({"prompt": "x", "num_images": 4, "batch_count": 5}, None, 400, "limit per job is 16"),
    ({"prompt": "x", "kind": "inpaint", "image": _png_b64(IMG), "mask": _mask(8, 8, (0, 0, 4, 4))}, None, 400,
     "mask is 8x8 but the image is 16x16"),
    ({"prompt": "x", "kind": "img2img", "image": base64.b64encode(b"%PDF-1.4 not an image").decode()}, None, 400,
     "image is not an image"),
    ({"prompt": "x", "kind": "img2img", "image": "https://example.com/cat.png"}, None, 400, "never fetches URLs"),
    ("prompt=x", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
])
def test_bad_requests_get_4xx_json_naming_the_problem(client, body, headers, status, words):
    if isinstance(body, str):
        r = client.post("/api/v1/jobs", content=body, headers=headers)
    else:
        r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and words in r.json()["detail"]


def test_oversized_bodies_and_foreign_hosts_are_refused(client):
    big = b'{"prompt": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    r = client.post("/api/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 33554432" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * (1024 * 1024)

    r = client.post("/api/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/v1/health", headers={"host": "evil.example:80"}).status_code == 400  # DNS rebinding
    r = client.post("/api/v1/jobs", json={"prompt": "x"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "bad_origin"
    assert client.post("/api/v1/jobs/x/cancel", headers={"origin": "null"}).status_code == 403  # sandboxed frames
    assert client.post("/api/v1/jobs/x/cancel", headers={"origin": client.base_url.scheme + "://127.0.0.1"}).status_code == 404


def test_health_and_capabilities(client):
    h = client.get("/api/v1/health").json()
    assert h["status"] == "ok" and h["model"].endswith("tiny-cascade0")
    cap = client.get("/api/v1/capabilities").json()
    assert cap["models"][0]["sizes"] == [8, 16] and cap["samplers"] == ["ddim", "ddpm", "dpmpp_2m", "dpmpp_3m"]
    assert cap["limits"]["max_queue"] == 2 and "upscale" in cap["kinds"]
    assert client.get("/openapi.json").json()["paths"]["/api/v1/jobs"]


def test_inpaint_keeps_the_unmasked_pixels_and_png_info_reads_it_back(client):
    from serve_helpers import sse_events

    img = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8"))
    job = client.post("/api/v1/jobs", json={"prompt": "a green star", "kind": "inpaint", "image": _png_b64(img),
                                            "mask": _mask(16, 16, (0, 0, 16, 8)), "seed": 3, "steps": 2}).json()
    done = sse_events(client, job["events_url"])[-1][1]
    assert done["status"] == "completed", done["error"]
    png = client.get(done["images"][0]["url"]).content
    info = client.post("/api/v1/png-info", json={"image": base64.b64encode(png).decode()}).json()
    assert info["request"]["mode"] == "inpaint" and info["parsed"]["Seed"] == "3"
    assert client.get(f"/api/v1/images/{done['images'][0]['id']}/parameters").json() == info


def test_cheap_candidates_then_upscale_the_chosen_one(client):
    from serve_helpers import sse_events

    job = client.post("/api/v1/jobs", json={"prompt": "a red circle", "stop_at": 1, "num_images": 2, "seed": 8,
                                            "steps": 2}).json()
    done = sse_events(client, job["events_url"])[-1][1]
    assert [(i["width"], i["stage"]) for i in done["images"]] == [(8, 0), (8, 0)]  # base stage only
    up = client.post("/api/v1/jobs", json={"prompt": "a red circle", "kind": "upscale", "seed": 1, "steps": 2,
                                           "image_id": done["images"][1]["id"]}).json()
    events = sse_events(client, up["events_url"])
    assert {d["stage"] for k, d in events if k == "progress"} == {1}  # only the SR stage runs
    assert [(i["width"], i["stage"]) for i in events[-1][1]["images"]] == [(16, 1)]
    again = sse_events(client, up["events_url"] , until=("completed",))  # a finished job replays its log
    assert [k for k, _ in again] == [k for k, _ in events]
    with client.stream("GET", up["events_url"], headers={"last-event-id": str(len(events) - 1)}) as r:
        assert [ln for ln in r.iter_lines() if ln.startswith("event: ")] == ["event: completed"]  # resumes


def test_one_worker_per_device_runs_jobs_side_by_side(start_server, tmp_path):
    s = start_server(tmp_path, devices=("cpu", "cpu"))  # two workers sharing one copy here (read-only weights)
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            ids = [c.post("/api/v1/jobs", json={"prompt": "a red circle", **LONG}).json()["id"] for _ in range(3)]
            deadline = time.monotonic() + 20
            while len((snap := c.get("/api/v1/queue").json())["running"]) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert sorted(j["id"] for j in snap["running"]) == sorted(ids[:2]) and [j["id"] for j in snap["pending"]] == ids[2:]
            for i in ids:
                c.post(f"/api/v1/jobs/{i}/cancel")
    finally:
        s.stop()


def test_token_is_required_when_set(start_server, tmp_path):
    s = start_server(tmp_path, token="s3cret")
    try:
        assert httpx.get(s.url + "/api/v1/health").status_code == 401
        r = httpx.get(s.url + "/api/v1/health", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
        assert httpx.get(s.url + "/api/v1/health", headers={"authorization": "Bearer s3cret"}).status_code == 200
        page = httpx.get(s.url + "/?token=s3cret")  # the page's first visit sets a cookie for fetch/EventSource
        assert page.status_code == 200 and "openimagen_token=s3cret" in page.headers["set-cookie"]
        assert httpx.get(s.url + "/api/v1/health", cookies={"openimagen_token": "s3cret"}).status_code == 200
    finally:
        s.stop()


def test_gallery_survives_a_restart(start_server, tmp_path):
    from serve_helpers import sse_events

    first = start_server(tmp_path)
    with httpx.Client(base_url=first.url, timeout=60) as c:
        job = c.post("/api/v1/jobs", json={"prompt": "two blue stars", "steps": 2, "batch_count": 2, "seed": 9}).json()
        assert job["seeds"] == [9, 10]
        assert sse_events(c, job["events_url"])[-1][0] == "completed"
        before = c.get("/api/v1/gallery").json()["images"]
    first.stop()
    (tmp_path / "gallery.jsonl").open("a").write('{"id": "cut short by a cra')  # a crash mid-line is skipped
    second = start_server(tmp_path)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            after = c.get("/api/v1/gallery").json()["images"]
            assert after == before and [i["seed"] for i in after] == [10, 9]  # newest first
            assert c.get(after[0]["url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        second.stop()


def test_serve_off_loopback_without_a_token_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("OPENIMAGEN_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --token" in err


def test_requests_record_the_precision_the_model_was_loaded_in(tiny_model, tmp_path, monkeypatch):
    """auto is resolved once at start; every request (so every PNG, so --from-png) names that precision."""
    from openimagen import precision
    from openimagen.serve import Settings
    from openimagen.serve.app import create_app
    from openimagen.serve.inputs import requests_for

    for native, want in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        app = create_app(Settings(out_dir=tmp_path / want), model=tiny_model[0], precision="auto",
                         loaded=[tiny_model[1]])
        c = app.state.ctx
        assert c.info.precision == want
        reqs = requests_for("txt2img", {"prompt": "a red circle", "steps": 2}, c.info, c.settings, batch_count=2, seed=3)
        assert [r.precision for r in reqs] == [want, want] and [r.seed for r in reqs] == [3, 4]
        c.queue.stop()
