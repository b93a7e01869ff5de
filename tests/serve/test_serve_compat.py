"""Existing clients, unchanged, against our server: `webuiapi` (the most-used Python client of A1111's API)
for txt2img and img2img with a mask, and OpenAI's own Python client for /v1/images/generations."""
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    return start_server(tmp_path_factory.mktemp("compat-gallery"), max_queue=4)


@pytest.fixture(scope="module")
def webui(server):
    import webuiapi

    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, steps=2)


def test_webuiapi_txt2img_at_its_default_512_gets_the_nearest_size_resized(webui, server):
    r = webui.txt2img(prompt="a red circle above a blue square", seed=11, batch_size=2, cfg_scale=3)
    assert [im.size for im in r.images] == [(512, 512)] * 2  # its default size
    info = r.info  # webuiapi json-loads our `info` string
    assert info["all_seeds"] == [11, 12] and info["seed"] == 11 and len(info["infotexts"]) == 2
    ours = info["openimagen"]
    assert ours["native_size"] == 16 and "nearest size at or above 512x512" in ours["size_note"]
    assert "Lanczos" in ours["size_note"] and "alwayson_scripts" in ours["ignored_fields"]
    assert "Euler a" in ours["sampler"]  # webuiapi always sends Euler a: mapped to the model's own sampler
    assert "Seed: 11" in info["infotexts"][0] and "Resized: 16x16 to 512x512" in info["infotexts"][0]
    assert r.parameters["prompt"] == "a red circle above a blue square"  # the request, echoed
    # the same seed alone gives the same image (image i was made with seed + i)
    again = webui.txt2img(prompt="a red circle above a blue square", seed=12, cfg_scale=3, width=16, height=16)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open(server.app.state.ctx.gallery.path(
        server.app.state.ctx.gallery.get(info["openimagen"]["images"][1].split("/")[-1][:-4])))))


def test_webuiapi_img2img_and_inpaint(webui):
    init = Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype("uint8"))
    r = webui.img2img(images=[init], prompt="a blue square", seed=4, denoising_strength=0.5, width=16, height=16)
    assert r.images[0].size == (16, 16) and r.info["all_seeds"] == [4] and r.info["openimagen"]["size_note"] is None
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 16, 8))
    r = webui.img2img(images=[init], mask_image=mask, prompt="a green star", seed=4, width=16, height=16,
                      inpainting_fill=1)
    out = np.asarray(r.images[0].convert("RGB")).astype(int)
    assert r.images[0].size == (16, 16)
    assert np.abs(out[12:] - np.asarray(init)[12:]).max() <= 40  # the kept half stays close to the input


def test_webuiapi_discovery_progress_interrupt_and_errors(webui):
    assert webui.get_sd_models()[0]["title"].endswith("tiny-cascade0")
    names = [s["name"] for s in webui.get_samplers()]
    assert "ddim" in names and "Euler a" in names
    assert webui.get_options()["sd_model_checkpoint"].endswith("tiny-cascade0")
    p = webui.get_progress()
    assert p["progress"] == 0 and p["state"]["job_count"] == 0 and p["current_image"] is None
    assert webui.interrupt() == {}
    with pytest.raises(RuntimeError, match="Sampler not found"):
        webui.txt2img(prompt="x", sampler_name="Heun++ 9000")
    with pytest.raises(RuntimeError, match="init_images"):
        webui.img2img(images=[], prompt="x")


def test_a1111_progress_reports_the_running_job_with_a_preview(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        job = c.post("/api/v1/jobs", json={"prompt": "a red circle", "steps": [400, 400]}).json()
        try:
            for _ in range(200):
                p = c.get("/sdapi/v1/progress").json()
                if p["current_image"]:
                    break
            assert p["current_task"] == job["id"] and 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 400
            assert Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).size == (8, 8)
            assert c.post("/sdapi/v1/interrupt").json() == {}
        finally:
            c.post(f"/api/v1/jobs/{job['id']}/cancel")
        from serve_helpers import sse_events

        assert sse_events(c, job["events_url"])[-1][0] == "cancelled"


def test_openai_client_images_generate(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    r = client.images.generate(prompt="two blue stars", n=2, size="64x64", quality="hd", response_format="b64_json")
    imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
    assert [im.size for im in imgs] == [(64, 64)] * 2 and r.created > 0
    r = client.images.generate(prompt="two blue stars", size="16x16", response_format="url")
    assert httpx.get(r.data[0].url).content[:4] == b"\x89PNG"
    assert [m.id for m in client.models.list()][0].endswith("tiny-cascade0")
    with pytest.raises(openai.BadRequestError, match="WIDTHxHEIGHT"):
        client.images.generate(prompt="x", size="huge")


def test_a_sync_client_that_goes_away_cancels_its_job(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 1000, "width": 16,
                                                          "height": 16}, timeout=1.0)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        deadline = time.monotonic() + 10
        while c.get("/api/v1/queue").json()["running"]:  # nobody would see its images: it stops
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert c.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
