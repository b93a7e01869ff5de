"""Requests: JSON round trip, defaults resolved from the model, PNGs that reproduce themselves bit for bit."""
import json

import pytest
import torch
from PIL import Image

from openimagen import api
from openimagen.cli import main
from openimagen.sampling import GenerationCancelled

FAST = dict(steps=2, seed=3)  # the bundled model with 2 steps per stage: about a second


def test_request_round_trips_through_json():
    req = api.GenerateRequest(prompt=["a red circle", "two blue stars"], negative_prompt="green", seed=11,
                              num_images=2, steps=[4, "smart27"], guidance=(3.0, None), sampler="ddim",
                              noise_level=[None, 0.1], height=[32, 48], width=64, stop_at=2, model="/some/folder",
                              precision="bf16")
    again = api.GenerateRequest.from_json(req.to_json())
    assert again == req and again.guidance == [3.0, None]  # tuples come back as lists, one spelling
    assert api.GenerateRequest.from_json(json.loads(req.to_json())) == req
    assert api.GenerateRequest("a cat").prompt == ["a cat"]


@pytest.mark.parametrize("bad,match", [
    ({"prompt": "x", "guidence": 2}, "unknown request field.*guidence"),
    ({"seed": 1}, "needs a prompt"),
    ({"prompt": "x", "precision": "fp8"}, "unknown precision"),
    ({"prompt": "x", "seed": "one"}, "seed must be a whole number"),
    ({"prompt": "x", "format": "something-else"}, "not a generation request"),
])
def test_bad_requests_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        api.GenerateRequest.from_json(json.dumps(bad))


@pytest.fixture(scope="module")
def bundled():
    from openimagen.load import load_model

    return load_model(None)


def test_resolve_fills_every_default_from_the_model(bundled):
    cfgs = [s.config for s in bundled.stages]
    n = len(cfgs)
    req = api.resolve(bundled, api.GenerateRequest(prompt=["a red circle"], guidance=[None] * (n - 1) + [1.5]))
    assert req.steps == [c.steps for c in cfgs] and req.sampler == [c.sampler for c in cfgs]
    assert req.guidance == [c.guidance for c in cfgs[:-1]] + [1.5]
    assert req.noise_level == [None] + [c.noise_level for c in cfgs[1:]]  # the base stage has no low-res input
    assert req.height == req.width == [c.resolution for c in cfgs] and req.stop_at == n
    assert api.resolve(bundled, req) == req  # resolving is idempotent


def test_the_resolved_request_reproduces_the_images(bundled):
    first = api.run(api.GenerateRequest(prompt=["a red circle above a blue square"], **FAST), cascade=bundled,
                    progress=False)
    again = api.run(api.GenerateRequest.from_json(first.request.to_json()), cascade=bundled, progress=False)
    for a, b in zip(first.images, again.images):
        assert torch.equal(a, b)
    direct = bundled.generate(["a red circle above a blue square"], seed=3, steps=2, progress=False)
    assert torch.equal(direct.images[-1], first.images[-1])  # the request means what generate means


def test_a_cancelled_run_writes_no_file(bundled, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(GenerationCancelled):
        api.write_pngs(api.run(api.GenerateRequest(prompt=["a red circle"], **FAST), cascade=bundled,
                               progress=False, callback=lambda step: step.stage == 0), out)
    assert not out.exists() or not any(out.iterdir())


def test_cli_png_carries_the_request_and_from_png_reproduces_it_bitwise(bundled, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["-q", "generate", "a red circle above a blue square", "--steps", "2", "--seed", "5",
                 "--out", str(a)]) == 0
    files = sorted(a.glob("*.png"), key=lambda f: f.name.split("-stage")[1])
    n = len(bundled.stages)
    assert [f.name.split("-stage")[1] for f in files] == [f"{k}-{s.resolution}px.png" for k, s in enumerate(bundled.stages)]
    meta = json.loads(Image.open(files[-1]).text[api.PNG_KEY])
    assert meta["request"]["seed"] == 5 and meta["request"]["steps"] == [2] * n and meta["stage"] == n - 1
    assert meta["version"] and meta["request"]["model"] is None  # None: the bundled model

    assert main(["-q", "generate", "--from-png", str(files[-1]), "--out", str(b)]) == 0
    for f in files:
        assert (b / f.name).read_bytes() == f.read_bytes(), f.name


def test_from_png_refuses_a_png_we_did_not_write(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["generate", "--from-png", str(plain)]) == 2
    assert "carries no openimagen parameters" in capsys.readouterr().err
    assert main(["generate", "--from-png", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
