"""`openimagen edit` / `upscale` and EditRequest: JSON, every bad input as one line with exit code 2 and
nothing written, help examples that parse; edits end to end on the bundled model, reproduced bit for bit
from their PNGs; the defaults run_edit resolves are the editing library's."""
import dataclasses
import json
import random
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from openimagen import api, edit_request, images
from openimagen.cli import build_parser, main

FAST = ["-q", "--threads", "1"]


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors exit from inside parse_args
        code = e.code
    return code, capsys.readouterr().err.strip()


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert "error:" in lines[0] and "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} missing from {lines[0]!r}"


@pytest.fixture
def scene(tmp_path):
    """A 64 px shapes-world picture (the bundled model's world) and a mask over its top half."""
    from openimagen.data.shapes import render, sample_scene

    render(sample_scene(random.Random(0)), 64).save(tmp_path / "scene.png")
    m = np.zeros((64, 64), np.uint8)
    m[:32] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    return tmp_path / "scene.png", tmp_path / "mask.png"


# ----------------------------------------------------------------------------- EditRequest


def test_edit_request_round_trips_through_json(scene):
    image, mask = scene
    for req in [
        api.EditRequest(mode="img2img", image=str(image), prompt="a red circle", strength=0.6, seed=3,
                        steps=(4, "smart27"), guidance=[3.0, None], sampler="ddim", model="/m", precision="bf16"),
        api.EditRequest(mode="inpaint", image=str(image), mask=str(mask), prompt=["a", "b"], blend="keep_known",
                        num_images=2, negative_prompt="green", noise_level=[None, 0.1], stop_at=1),
        api.EditRequest(mode="outpaint", image=str(image), prompt=["a"], extend={"aspect": "16:9"}, fill="gray",
                        fit="refuse", strength=0.9, blend="repaint", resample=2),
        api.EditRequest(mode="upscale", image=str(image), prompt=["a"], from_stage=1, original=str(image),
                        mask=str(mask), strength=0.8, sr="/sr", sha256={"image": "ab"}),
    ]:
        again = api.EditRequest.from_json(req.to_json())
        assert again == req and api.EditRequest.from_json(json.loads(req.to_json())) == req
        assert json.loads(req.to_json())["format"] == api.EDIT_FORMAT
    assert api.EditRequest("img2img", "x.png", "a cat").prompt == ["a cat"]


@pytest.mark.parametrize("fields,match", [
    ({"mode": "restyle"}, "unknown edit mode 'restyle'"),
    ({"mode": "inpaint"}, "inpaint needs a mask"),
    ({"strength": 0}, r"strength must be in \(0, 1\]"),
    ({"strength": 1.5}, r"strength must be in \(0, 1\]"),
    ({"strength": True}, "strength must be"),
    ({"mask": "m.png"}, "mask is not used by img2img"),
    ({"extend": {"left": 3}}, "extend is not used by img2img"),
    ({"fit": "round"}, "fit is not used by img2img"),
    ({"mode": "inpaint", "mask": "m.png", "resample": 0}, "resample must be a whole number >= 1"),
    ({"mode": "outpaint"}, "outpaint needs extend"),
    ({"mode": "outpaint", "extend": {"left": 0}}, "nothing to outpaint"),
    ({"mode": "outpaint", "extend": {"lft": 3}}, "extend takes sides"),
    ({"mode": "outpaint", "extend": {"left": 3, "width": 90}}, "extend takes sides"),
    ({"mode": "outpaint", "extend": {"left": -3}}, "left=-3"),
    ({"mode": "outpaint", "extend": {"aspect": "wide"}}, "not a ratio"),
    ({"mode": "upscale", "from_stage": 0}, "from_stage must be a stage index >= 1"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"seed": 1.5}, "seed must be a whole number"),
])
def test_bad_edit_requests_name_the_problem(fields, match):
    with pytest.raises(ValueError, match=match):
        api.EditRequest(**{"mode": "img2img", "image": "x.png", "prompt": ["a"], **fields})


@pytest.mark.parametrize("data,match", [
    ({"mode": "img2img", "image": "x.png", "prompt": "a", "height": 64}, r"unknown request field\(s\) \['height'\]"),
    ({"mode": "img2img", "prompt": "a"}, "needs an image"),
    ({"format": api.REQUEST_FORMAT, "mode": "img2img", "image": "x", "prompt": "a"}, "not an edit request"),
])
def test_bad_edit_json(data, match):
    with pytest.raises(ValueError, match=match):
        api.EditRequest.from_json(json.dumps(data))


@pytest.mark.parametrize("extend,sides", [
    ({"right": 32}, {"left": 0, "right": 32, "top": 0, "bottom": 0}),
    ({"width": 100}, {"left": 18, "right": 18, "top": 0, "bottom": 0}),          # centred
    ({"width": 65, "height": 70}, {"left": 0, "right": 1, "top": 3, "bottom": 3}),
    ({"aspect": "2:1"}, {"left": 32, "right": 32, "top": 0, "bottom": 0}),        # the short dimension grows
    ({"aspect": "1:2"}, {"left": 0, "right": 0, "top": 32, "bottom": 32}),
    ({"aspect": "16/9"}, {"left": 25, "right": 25, "top": 0, "bottom": 0}),       # 114 x 64
])
def test_extend_resolves_to_four_sides(extend, sides):
    assert edit_request.sides_for(extend, 64, 64) == sides


@pytest.mark.parametrize("extend,match", [({"width": 50}, "smaller than the image.*outpainting only extends"),
                                          ({"aspect": "1:1"}, "already has aspect 1:1"),
                                          ({"width": 64, "height": 64}, "already has the size 64x64")])
def test_extend_that_shrinks_or_changes_nothing(extend, match):
    with pytest.raises(ValueError, match=match):
        edit_request.sides_for(extend, 64, 64)


def test_resolve_inputs_stores_absolute_paths_hashes_and_sides(scene, monkeypatch):
    image, mask = scene
    monkeypatch.chdir(image.parent)
    req = edit_request.resolve_inputs(api.EditRequest(mode="outpaint", image="scene.png", prompt=["a"], extend={"width": 96}))
    assert req.image == str(image.resolve()) and req.extend == {"left": 16, "right": 16, "top": 0, "bottom": 0}
    assert req.sha256 == {"image": images.file_sha256(image)}
    stored = api.EditRequest(mode="inpaint", image=str(image), mask="mask.png", prompt=["a"],
                             sha256={"image": "0" * 64, "mask": images.file_sha256(mask)})
    assert edit_request.resolve_inputs(stored).sha256["image"] == "0" * 64  # a stored hash is kept, to be checked on load


def test_edit_pngs_carry_the_request_and_are_named_by_their_stage(scene, tmp_path):
    image, _ = scene
    req = edit_request.resolve_inputs(api.EditRequest(mode="upscale", image=str(image), prompt=["a red circle"],
                                             from_stage=1, stop_at=2))
    result = api.GenerateResult(images=[torch.zeros(1, 3, 8, 16)], prompts=["a red circle"], request=req, first_stage=1)
    (path,) = api.write_pngs(result, tmp_path / "out")
    assert path.name == "00-a-red-circle-stage1-16x8px.png"
    meta = json.loads(Image.open(path).text[api.PNG_KEY])
    assert meta["stage"] == 1 and meta["request"]["sha256"]["image"] == images.file_sha256(image)
    assert api.request_from_png(path) == req  # the PNG knows it holds an edit


# ----------------------------------------------------------------------------- bad input on the command line


def test_missing_and_corrupt_image(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "edit", str(tmp_path / "nowhere.png"), "a red circle", "--out", str(out))
    one_line_error(code, err, "nowhere.png: no such file")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, err = run_cli(capsys, "upscale", str(tmp_path / "bad.png"), "a red circle", "--out", str(out))
    one_line_error(code, err, "bad.png is not a readable image", "PNG or JPEG")
    assert not out.exists()


def test_huge_image_states_the_rule(capsys, scene, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    code, err = run_cli(capsys, "edit", str(scene[0]), "a red circle", "--out", str(tmp_path / "out"))
    one_line_error(code, err, "64x64", "limit", "aspect kept", "shrink it")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mask,needles", [
    (np.zeros((48, 64), np.uint8), ["is 64x48 but image", "is 64x64", "resize or redraw it at 64x64"]),
    (np.zeros((64, 64), np.uint8), ["black everywhere", "nothing would be repainted"]),
    (np.full((64, 64), 255, np.uint8), ["white everywhere", "img2img", "openimagen generate"]),
])
def test_bad_masks(capsys, scene, tmp_path, mask, needles):
    Image.fromarray(mask).save(tmp_path / "m.png")
    for cmd in ("edit", "upscale"):
        code, err = run_cli(capsys, cmd, str(scene[0]), "a red circle", "--mask", str(tmp_path / "m.png"),
                            "--out", str(tmp_path / "out"))
        one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_missing_mask(capsys, scene, tmp_path):
    code, err = run_cli(capsys, "edit", str(scene[0]), "a red circle", "--mask", str(tmp_path / "no-mask.png"))
    one_line_error(code, err, "no-mask.png: no such file")


@pytest.mark.parametrize("args,needles", [
    (["--strength", "0"], ["--strength must be a number in (0, 1]", "'0'"]),
    (["--strength", "1.5"], ["--strength", "1.5"]),
    (["--strength", "strong"], ["--strength", "strong"]),
    (["--extend", "lft=32"], ["--extend 'lft=32'", "left, right, top, bottom"]),
    (["--extend", "left=-3"], ["left=-3", "whole number of pixels"]),
    (["--extend", "left"], ["SIDE=PIXELS"]),
    (["--extend", "left=0,right=0"], ["nothing to outpaint"]),
    (["--extend", "width=32"], ["smaller than the image 64x64", "outpainting only extends"]),
    (["--extend", "aspect=1:1"], ["already has aspect"]),
    (["--extend", "aspect=wide"], ["not a ratio", "16:9"]),
    (["--extend", "right=32", "--mask", "MASK"], ["--mask (inpaint) or --extend (outpaint), not both"]),
    (["--resample", "0"], ["--resample must be at least 1"]),
    (["--blend", "keep_known"], ["blend is not used by img2img"]),
    (["--height", "64"], ["unrecognized arguments: --height"]),
])
def test_bad_edit_options(capsys, scene, tmp_path, args, needles):
    args = [str(scene[1]) if a == "MASK" else a for a in args]
    code, err = run_cli(capsys, "edit", str(scene[0]), "a red circle", *args, "--out", str(tmp_path / "out"))
    one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,needles", [
    (["edit"], ["give an image and a prompt", "openimagen edit photo.png"]),
    (["edit", "IMAGE"], ["give an image and a prompt"]),
    (["edit", "IMAGE", "  "], ["empty prompt"]),
    (["upscale", "IMAGE"], ["give an image and a prompt", "openimagen upscale"]),
    (["upscale", "IMAGE", "a", "--from-stage", "0"], ["--from-stage must be at least 1"]),
    (["upscale", "IMAGE", "a", "--extend", "left=3"], ["unrecognized arguments: --extend"]),
])
def test_missing_or_empty_arguments(capsys, scene, argv, needles):
    code, err = run_cli(capsys, *[str(scene[0]) if a == "IMAGE" else a for a in argv])
    one_line_error(code, err, *needles)


def test_upscale_needs_a_stage_that_can_take_the_image(capsys, scene, tmp_path, minilm, bundled):
    # Every stage of the bundled cascade but the base takes an image; past the last there is none, and a
    # one-stage model has none at all.
    n = len(bundled.stages)
    code, err = run_cli(capsys, *FAST, "upscale", str(scene[0]), "a red circle", "--from-stage", str(n),
                        "--out", str(tmp_path / "out"))
    one_line_error(code, err, f"from_stage={n}", f"super-resolution stages are 1..{n - 1}")
    from openimagen.cascade import Cascade

    Cascade.build(minilm, [("tiny", 16)]).save_pretrained(tmp_path / "one-stage")
    code, err = run_cli(capsys, *FAST, "upscale", str(scene[0]), "a red circle", "--model", str(tmp_path / "one-stage"),
                        "--out", str(tmp_path / "out"))
    one_line_error(code, err, "has one stage and nothing to upscale with", "--sr")
    assert not (tmp_path / "out").exists()


def _stored_edit_png(scene, folder):
    """A PNG carrying an edit request, as `openimagen edit` writes it (pixels made up: no model runs)."""
    req = edit_request.resolve_inputs(api.EditRequest(mode="img2img", image=str(scene[0]), prompt=["a red circle"],
                                             strength=0.5))
    result = api.GenerateResult(images=[torch.zeros(1, 3, 8, 8)], prompts=req.prompt, request=req)
    return api.write_pngs(result, folder)[0]


def test_from_png_refuses_a_changed_input(capsys, scene, tmp_path):
    png = _stored_edit_png(scene, tmp_path / "first")
    Image.new("RGB", (64, 64), "white").save(scene[0])  # the input is overwritten afterwards
    for cmd in ("edit", "upscale", "generate"):  # the PNG says what it holds; any of the three runs it
        code, err = run_cli(capsys, cmd, "--from-png", str(png), "--out", str(tmp_path / "again"))
        one_line_error(code, err, "scene.png is not the file the request was made with", "unchanged copy")
    code, err = run_cli(capsys, "edit", "--from-png", str(png), str(tmp_path / "elsewhere.png"))
    one_line_error(code, err, "elsewhere.png: no such file")
    code, err = run_cli(capsys, "edit", "--from-png", str(png), "IMAGE", "a prompt")
    one_line_error(code, err, "--from-png reproduces the stored prompt")
    assert not (tmp_path / "again").exists()


def test_from_png_of_a_generated_image_takes_no_input_image(capsys, tmp_path):
    req = api.GenerateRequest(prompt=["a red circle"])
    png = api.write_pngs(api.GenerateResult(images=[torch.zeros(1, 3, 8, 8)], prompts=req.prompt, request=req),
                         tmp_path)[0]
    code, err = run_cli(capsys, "edit", "--from-png", str(png), str(png))
    one_line_error(code, err, "was made from text alone")


def test_exit_code_and_one_line_from_a_real_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "openimagen.cli", "edit", str(tmp_path / "none.png"), "a red circle",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "none.png: no such file" in out.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- help and options


@pytest.mark.parametrize("cmd", ["edit", "upscale"])
def test_help_examples_parse(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith(f"openimagen {cmd} ")]
    assert len(examples) >= 3
    for line in examples:
        args = build_parser().parse_args(shlex.split(line)[1:])  # every example is a valid command
        assert args.command == cmd


def test_edit_and_upscale_take_the_options_of_generate():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    opts = {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.items()}
    shared = opts["generate"] - {"--height", "--width", "--no-expand"}  # edits never expand: the image says the rest
    assert shared <= opts["edit"] and shared <= opts["upscale"]
    assert {"--seed", "--steps", "--guidance", "--sampler", "--model", "--sr", "--precision", "--device", "--offload",
            "--noise-level", "--out", "--num-images", "--from-png"} <= shared


# ----------------------------------------------------------------------------- edits end to end (editing.py)


def _pngs(folder):
    return sorted(folder.glob("*.png"))


def _pixels(path):
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1


@pytest.mark.parametrize("mode_args,mode", [
    (["--strength", "0.6"], "img2img"),
    (["--mask", "MASK", "--blend", "keep_known"], "inpaint"),
    (["--extend", "right=64"], "outpaint"),
])
def test_edit_end_to_end_and_from_png_bitwise(capsys, scene, bundled, tmp_path, mode_args, mode):
    mode_args = [str(scene[1]) if a == "MASK" else a for a in mode_args]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    argv = [*FAST, "edit", str(scene[0]), "a red circle above a blue square", *mode_args, "--steps", "4",
            "--seed", "5", "--out"]
    assert main(argv + [str(a)]) == 0, capsys.readouterr().err
    files = _pngs(a)
    n, scale = len(bundled.stages), bundled.stages[-1].resolution // 64  # the scene is 64 px
    assert [f.name.split("-stage")[1].split("-")[0] for f in files] == [str(k) for k in range(n)]  # the whole cascade ran
    meta = json.loads(Image.open(files[-1]).text[api.PNG_KEY])
    req = meta["request"]
    assert req["format"] == api.EDIT_FORMAT and req["mode"] == mode and req["seed"] == 5 and req["stop_at"] == n
    assert req["sha256"]["image"] == images.file_sha256(scene[0]) and meta["stage"] == n - 1
    if mode == "outpaint":
        assert req["extend"] == {"left": 0, "right": 64, "top": 0, "bottom": 0}
        assert Image.open(files[-1]).size == (128 * scale, 64 * scale)
    assert main([*FAST, "edit", "--from-png", str(files[-1]), "--out", str(b)]) == 0
    assert main([*FAST, "generate", "--from-png", str(files[0]), "--out", str(c)]) == 0
    for f in files:
        assert (b / f.name).read_bytes() == f.read_bytes() == (c / f.name).read_bytes(), f.name


def test_inpainting_keeps_the_unmasked_pixels_of_the_input(capsys, scene, tmp_path):
    # IF's semantics (keep_known): the known region is the input itself after every step; at the stage whose
    # size is the input's (64 px) the unmasked pixels come back as they were, up to the PNG rounding.
    assert main([*FAST, "edit", str(scene[0]), "a green star", "--mask", str(scene[1]), "--blend", "keep_known",
                 "--steps", "3", "--out", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    at_64 = next(f for f in _pngs(tmp_path / "o") if f.name.endswith("-64px.png"))  # the input's size
    got, want = _pixels(at_64), _pixels(scene[0])
    assert got.shape == want.shape
    assert (got[:, 32:] - want[:, 32:]).abs().max() <= 1 / 127.5 + 1e-6  # kept (bottom half)
    assert (got[:, :32] - want[:, :32]).abs().max() > 0.1                # repainted (top half)


def test_upscale_end_to_end_and_from_png(capsys, scene, bundled, tmp_path):
    small = tmp_path / "small.png"
    Image.open(scene[0]).resize((32, 32), Image.Resampling.BICUBIC).save(small)
    assert main([*FAST, "upscale", str(small), "a red circle above a blue square", "--steps", "3",
                 "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    pngs = _pngs(tmp_path / "a")  # every stage from the first SR stage on
    R = bundled.stages[-1].resolution
    assert [f.name.split("-stage")[1] for f in pngs] == [f"{k}-{s.resolution}px.png" for k, s in enumerate(bundled.stages)][1:]
    png = pngs[-1]
    assert Image.open(png).size == (R, R)
    assert json.loads(Image.open(png).text[api.PNG_KEY])["request"]["from_stage"] == 1
    assert main([*FAST, "upscale", "--from-png", str(png), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / png.name).read_bytes() == png.read_bytes()
    # the same input from another place: its sha256 matches, so it runs
    moved = tmp_path / "moved.png"
    moved.write_bytes(small.read_bytes())
    small.unlink()
    assert main([*FAST, "upscale", "--from-png", str(png), str(moved), "--out", str(tmp_path / "c")]) == 0
    assert torch.equal(_pixels(tmp_path / "c" / png.name), _pixels(png))  # the PNG text names the new path
    assert json.loads(Image.open(tmp_path / "c" / png.name).text[api.PNG_KEY])["request"]["image"] == str(moved)


@pytest.fixture(scope="module")
def bundled():
    from openimagen.load import load_model

    return load_model(None)


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "outpaint", "upscale", "upscale-original", "upscale-mask"])
def test_run_edit_resolves_the_librarys_defaults(scene, bundled, mode):
    # run_edit runs the library with the values it resolved; they must be the ones the library picks itself.
    from openimagen import editing

    image, mask = scene
    x, m = images.load_image(image), images.load_mask(mask)
    kw = dict(steps=4, seed=2, progress=False)
    base = dict(image=str(image), prompt=["a red circle"], steps=4, seed=2)
    req, direct = {
        "img2img": (dict(mode="img2img"), lambda: editing.img2img(bundled, x, ["a red circle"], **kw)),
        "inpaint": (dict(mode="inpaint", mask=str(mask)), lambda: editing.inpaint(bundled, x, m, ["a red circle"], **kw)),
        "outpaint": (dict(mode="outpaint", extend={"right": 64}),
                     lambda: editing.outpaint(bundled, x, ["a red circle"], right=64, **kw)),
        "upscale": (dict(mode="upscale"), lambda: editing.upscale(bundled, x, ["a red circle"], **kw)),
        "upscale-original": (dict(mode="upscale", original=str(image)),
                             lambda: editing.upscale(bundled, x, ["a red circle"], original=x, **kw)),
        "upscale-mask": (dict(mode="upscale", original=str(image), mask=str(mask)),
                         lambda: editing.upscale(bundled, x, ["a red circle"], original=x, mask=m, **kw)),
    }[mode]
    result = api.run_edit(api.EditRequest(**base, **req), cascade=bundled, progress=False)
    want = direct()
    assert len(result.images) == len(want.images)
    assert all(torch.equal(a, b) for a, b in zip(result.images, want.images))
    r = result.request
    first = 1 if mode.startswith("upscale") else 0
    cfgs = [s.config for s in bundled.stages]
    n = len(cfgs)
    assert r.stop_at == n and r.steps == [None] * first + [4] * (n - first)
    assert r.sampler == [None] * first + [c.sampler for c in cfgs][first:]
    assert r.noise_level == [None] + [float(c.noise_level) for c in cfgs[1:]]
    assert r.guidance[1:] == [float(c.guidance) for c in cfgs[1:]]
    assert (r.strength is None) == (mode == "upscale")  # plain super-resolution starts from noise
    repaints = mode in ("inpaint", "outpaint", "upscale-mask")
    assert (r.blend, r.resample) == ((editing.default_blend(bundled, first), 1) if repaints else (None, None))
    assert (r.fill, r.fit) == (("edge", "round") if mode == "outpaint" else (None, None))
    again = api.run_edit(api.EditRequest.from_json(r.to_json()), cascade=bundled, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(result.images, again.images)) and again.request == r


def test_an_outpaint_size_the_unets_cannot_take_is_rounded_or_refused(capsys, scene, bundled, tmp_path):
    argv = [*FAST, "edit", str(scene[0]), "a red circle", "--extend", "right=1", "--steps", "2"]
    code, err = run_cli(capsys, *argv, "--fit", "refuse", "--out", str(tmp_path / "no"))
    one_line_error(code, err, "64x65", "nearest valid canvas sizes: 64x64, 64x72")
    assert not (tmp_path / "no").exists()
    assert main(argv + ["--out", str(tmp_path / "o")]) == 0  # fit=round: a larger canvas, cropped back
    at_64 = next(f for f in _pngs(tmp_path / "o") if f.name.endswith("-65x64px.png"))
    assert Image.open(at_64).size == (65, 64)
    scale = bundled.stages[-1].resolution // 64
    assert Image.open(_pngs(tmp_path / "o")[-1]).size == (65 * scale, 64 * scale)


@pytest.mark.parametrize("args,needles", [
    (["--extend", "right=8", "--fill", "plaid"], ["unknown fill 'plaid'", "edge"]),
    (["--mask", "MASK", "--blend", "smudge"], ["unknown blend 'smudge'", "keep_known", "repaint"]),
    (["--mask", "MASK", "--blend", "keep_known", "--resample", "3"], ["resample=3 needs blend='repaint'"]),
    (["--strength", "0.1", "--steps", "5"], ["runs no step", "raise the strength or the steps"]),
    (["--mask", "DOT"], ["the mask covers no pixel at stage 0's size 32x32", "larger"]),
])
def test_bad_input_the_library_finds_is_one_line_too(capsys, scene, tmp_path, args, needles):
    dot = np.zeros((64, 64), np.uint8)
    dot[10, 10] = 255  # one pixel: gone once resized to the 32 px base stage
    Image.fromarray(dot).save(tmp_path / "dot.png")
    args = [{"MASK": str(scene[1]), "DOT": str(tmp_path / "dot.png")}.get(a, a) for a in args]
    code, err = run_cli(capsys, *FAST, "edit", str(scene[0]), "a red circle", *args, "--out", str(tmp_path / "out"))
    one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()
