"""Fuzz corpus of bad input for the `openimagen` command (issue 18), as one table.

Every row: a command line (with files the row's setup makes), and what must happen: exit code 2 with ONE
line that names the problem (the needles), no traceback, and every file the user handed us unchanged;
or, for input that is odd but valid, exit code 0 (with the warning named). The CLI runs in-process
(`cli.main`) to keep the table fast; test_fuzz_subprocess_has_no_traceback runs a few rows for real.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from openimagen.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
P = "a red circle above a blue square"
GEN = ["generate", P, "--steps", "1"]
TRAIN = ["train", "--preset", "shapes-tiny"]


# ----------------------------------------------------------------------------------------------
# files the rows hand to the command


def tiny_model(folder: Path) -> Path:
    """A tiny untrained two-stage cascade (16 -> 32 px, MiniLM spec), written once per session."""
    from openimagen.cascade import Cascade

    class _Spec:  # a text-encoder stand-in that only writes its spec (the real one loads when generating)
        def spec(self):
            return {"kind": "minilm", "max_length": 32}

    c = Cascade.build(type("E", (), {"dim": 384})(), [("tiny", 16), ("tiny", 32)], steps=1, sampler="ddim")
    Cascade(_Spec(), list(c.stages)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("fuzz") / "tiny-model")


def _png(path: Path, size=(8, 8), mode="RGB", **kw) -> None:
    from PIL import Image

    Image.new(mode, size, **kw).save(path)


def _edit_model(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _json_edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _nan_weights(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    w = d / "stage_0" / "model.safetensors"
    state = load_file(str(w))
    k = next(iter(state))
    state[k] = state[k].clone().fill_(float("nan"))
    save_file(state, str(w))


def _pickled_weights(d: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, d / "stage_0" / "model.safetensors")  # a pickle under the safetensors name


def _data(tmp: Path, files: dict[str, bytes | str]) -> Path:
    d = tmp / "data"
    d.mkdir()
    for name, content in files.items():
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return d


def _good_png_bytes() -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(b, format="PNG")
    return b.getvalue()


def _w(path: Path, content) -> None:
    """Write a file; returns None so a table row can write `_w(...) or argv`."""
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _model_case(edit):
    return lambda tmp, model: ["generate", P, "--model", str(_edit_model(model, tmp / "m", edit))]


def _read_only(tmp: Path) -> Path:
    d = tmp / "ro"
    d.mkdir()
    if os.geteuid() == 0:  # root writes through mode bits: a read-only mount says no to root too
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(d)]).returncode != 0:
            pytest.skip("cannot make a read-only folder as root without mount")
    else:
        d.chmod(0o555)
    return d


# ----------------------------------------------------------------------------------------------
# the table: id -> (argv, or setup(tmp, model) -> argv), expected needles (None: must succeed)

BIG = "red " * 5000
CASES: dict[str, tuple] = {
    # prompts
    "prompt-empty": (["generate", "", "--steps", "1"], ["empty prompt"]),
    "prompt-whitespace": (["generate", "   \t ", "--steps", "1"], ["empty prompt"]),
    "prompt-none": (["generate", "--steps", "1"], ["no prompt"]),
    "prompt-not-utf8": (["generate", "a red \udcff circle", "--steps", "1"], ["not UTF-8"]),
    "prompt-control-char": (["generate", "a red \x07 circle", "--steps", "1"], ["control character"]),
    "negative-prompt-control": (GEN + ["--negative-prompt", "\x1b[31m"], ["control character"]),
    # numeric options at 0, negative, NaN, huge, non-numeric
    "steps-0": (GEN[:2] + ["--steps", "0"], ["--steps", "at least 1"]),
    "steps-negative": (GEN[:2] + ["--steps", "-3"], ["--steps"]),
    "steps-nan": (GEN[:2] + ["--steps", "nan"], ["--steps"]),
    "steps-huge": (GEN[:2] + ["--steps", "1000000000"], ["--steps 1000000000", "25-50"]),
    "steps-word": (GEN[:2] + ["--steps", "many"], ["--steps"]),
    "guidance-nan": (GEN + ["--guidance", "nan"], ["--guidance nan", "finite"]),
    "guidance-inf": (GEN + ["--guidance", "inf"], ["--guidance inf", "finite"]),
    "guidance-negative": (GEN + ["--guidance", "-1"], ["--guidance -1", "0 ignores the prompt"]),
    "guidance-huge": (GEN + ["--guidance", "1e9"], ["--guidance 1e+09", "at most"]),
    "guidance-word": (GEN + ["--guidance", "strong"], ["--guidance", "strong"]),
    "noise-level-negative": (GEN + ["--noise-level", "-5"], ["--noise-level -5", "outside", "[0, 1]"]),
    "noise-level-999": (GEN + ["--noise-level", "999"], ["--noise-level 999", "outside"]),
    "noise-level-nan": (GEN + ["--noise-level", "nan"], ["--noise-level nan", "finite"]),
    "noise-level-word": (GEN + ["--noise-level", "low"], ["--noise-level"]),
    "seed-negative": (GEN + ["--seed", "-1"], ["--seed -1"]),
    "seed-huge": (GEN + ["--seed", str(10**30)], ["--seed"]),
    "seed-word": (GEN + ["--seed", "lucky"], ["--seed"]),
    "num-images-0": (GEN + ["--num-images", "0"], ["--num-images", "at least 1"]),
    "num-images-negative": (GEN + ["--num-images", "-2"], ["--num-images"]),
    "num-images-100000": (GEN + ["--num-images", "100000"], ["100000 images", "GB", "at most"]),
    "num-images-nan": (GEN + ["--num-images", "nan"], ["--num-images"]),
    "height-0": (GEN + ["--height", "0"], ["--height"]),
    "height-huge": (GEN + ["--height", "100000"], ["GB", "at most"]),
    "width-word": (GEN + ["--width", "wide"], ["--width"]),
    "threads-0": (["--threads", "0"] + GEN, ["--threads"]),
    "max-steps-0": (TRAIN + ["--max-steps", "0", "--out", "x"], ["--max-steps"]),
    "train-stages-out-of-range": (TRAIN + ["--train-stages", "5", "--out", "x"], ["train_stages=(5,)", "0..1"]),
    "train-stages-word": (TRAIN + ["--train-stages", "base", "--out", "x"], ["--train-stages 'base'"]),
    "merge-stages-one-run": (lambda tmp, m: ["merge-stages", str(tmp), "--out", str(tmp / "m")],
                             ["at least two run folders"]),
    "merge-stages-not-runs": (lambda tmp, m: ["merge-stages", str(m), str(tmp), "--out", str(tmp / "m")],
                              ["is not a training run", "train_config.json"]),
    # devices and precision
    "device-cuda": (GEN + ["--device", "cuda"], ["--device cuda", "no usable CUDA"]),
    "device-cuda-7": (GEN + ["--device", "cuda:7"], ["--device cuda:7"]),
    "device-mps": (GEN + ["--device", "mps"], ["--device mps"]),
    "device-banana": (GEN + ["--device", "banana"], ["--device 'banana' is not a device"]),
    "precision-fp8": (GEN + ["--precision", "fp8"], ["--precision"]),
    "precision-fp16-ours": (lambda tmp, m: ["generate", P, "--model", str(m), "--precision", "fp16",
                                            "--out", str(tmp / "o")], None),
    "precision-bf16-ours": (lambda tmp, m: ["generate", P, "--model", str(m), "--precision", "bf16",
                                            "--out", str(tmp / "o")], None),
    # model folders
    "model-missing": (lambda tmp, m: ["generate", P, "--model", str(tmp / "nope")], ["no such folder"]),
    "model-empty": (lambda tmp, m: (tmp / "e").mkdir() or ["generate", P, "--model", str(tmp / "e")], ["neither"]),
    "model-is-a-file": (lambda tmp, m: _w(tmp / "f", "x") or ["generate", P, "--model", str(tmp / "f")],
                        ["neither"]),
    "model-truncated-weights": (_model_case(lambda d: (d / "stage_1" / "model.safetensors").write_bytes(
        (d / "stage_1" / "model.safetensors").read_bytes()[:1000])), ["model.safetensors", "corrupt"]),
    "model-invalid-json": (_model_case(lambda d: (d / "cascade.json").write_text("{not json")), ["not valid JSON"]),
    "model-json-list": (_model_case(lambda d: (d / "cascade.json").write_text("[1, 2]")), ["not an openimagen"]),
    "model-unknown-key": (_model_case(lambda d: _json_edit(d / "stage_0" / "config.json",
                                                           lambda c: c.update(colour="red"))), ["unknown key", "colour"]),
    "model-wrong-type": (_model_case(lambda d: _json_edit(d / "stage_0" / "config.json",
                                                          lambda c: c.update(steps=[1, 2, 3]))), ["steps"]),
    "model-wrong-shapes": (_model_case(lambda d: _json_edit(d / "stage_0" / "config.json",
                                                            lambda c: c["unet"].update(dim=24))), ["wrong shapes"]),
    "model-pickle-weights": (_model_case(_pickled_weights), ["corrupt or not a safetensors"]),
    "model-path-escape": (_model_case(lambda d: _json_edit(d / "cascade.json",
                                                           lambda c: c.update(stages=["../../etc", "stage_1"]))),
                          ["outside the model folder"]),
    "model-nan-weights": (_model_case(_nan_weights), ["NaN/inf", "damaged"]),
    # outputs
    "out-is-a-file": (lambda tmp, m: _w(tmp / "taken", "mine") or GEN + ["--out", str(tmp / "taken")],
                      ["--out", "is a file"]),
    "out-read-only": (lambda tmp, m: GEN + ["--out", str(_read_only(tmp) / "o")], ["not writable"]),
    "train-out-is-a-file": (lambda tmp, m: _w(tmp / "t", "mine") or TRAIN + ["--out", str(tmp / "t")],
                            ["is a file"]),
    "embed-out-is-a-file": (lambda tmp, m: _w(tmp / "e", "mine") or ["embed", "--preset", "shapes-tiny", "--out",
                                                                    str(tmp / "e")], ["is a file"]),
    "evaluate-out-is-a-file": (lambda tmp, m: _w(tmp / "v", "mine") or ["evaluate", "--out", str(tmp / "v")],
                               ["is a file"]),
    "resume-mistyped": (lambda tmp, m: (tmp / "runs" / "real" / "checkpoints").mkdir(parents=True) or
                        TRAIN + ["--out", str(tmp / "runs" / "reall"), "--resume"], ["nothing to resume", "'real'"]),
    # --set, TOML, YAML
    "set-lr-word": (TRAIN + ["--set", "optim.lr=fast", "--out", "x"], ["optim.lr='fast'", "e.g. optim.lr="]),
    "set-lr-nan": (TRAIN + ["--set", "optim.lr=nan", "--out", "x"], ["optim.lr=nan", "finite"]),
    "set-lr-empty": (TRAIN + ["--set", "optim.lr=", "--out", "x"], ["optim.lr=''"]),
    "set-ema-decay-word": (TRAIN + ["--set", "ema_decay=abc", "--out", "x"], ["ema_decay='abc'", "e.g. ema_decay=0.99"]),
    "set-betas-scalar": (TRAIN + ["--set", "optim.betas=0.9", "--out", "x"], ["optim.betas=0.9", "[0.9, 0.99]"]),
    "set-ema-warmup-maybe": (TRAIN + ["--set", "ema_warmup=maybe", "--out", "x"], ["ema_warmup='maybe'", "true or false"]),
    "set-sample-prompts-str": (TRAIN + ["--set", "sample_prompts=hello", "--out", "x"], ["sample_prompts='hello'", "list"]),
    "set-text-encoder-t5": (TRAIN + ["--set", "text_encoder=t5", "--out", "x"], ["text_encoder='t5'", '"kind": "t5"']),
    "set-steps-float": (TRAIN + ["--set", "stages.0.steps=2.5", "--out", "x"], ["stages.0.steps=2.5", "whole number"]),
    "set-unknown-key": (TRAIN + ["--set", "optim.lrr=1", "--out", "x"], ["unknown config key", "lrr"]),
    "set-no-equals": (TRAIN + ["--set", "optim.lr", "--out", "x"], ["key=value"]),
    "set-bad-index": (TRAIN + ["--set", "stages.7.steps=1", "--out", "x"], ["list of 2"]),
    "config-is-a-folder": (lambda tmp, m: TRAIN + ["--config", str(tmp), "--out", "x"], ["is a folder"]),
    "config-missing": (lambda tmp, m: TRAIN + ["--config", str(tmp / "none.toml"), "--out", "x"], ["does not exist"]),
    "config-bad-toml": (lambda tmp, m: _w(tmp / "c.toml", "optim = [") or
                        TRAIN + ["--config", str(tmp / "c.toml"), "--out", "x"], ["does not parse"]),
    "config-yaml-list": (lambda tmp, m: _w(tmp / "c.yaml", "- 1\n- 2\n") or
                         TRAIN + ["--config", str(tmp / "c.yaml"), "--out", "x"], ["mapping"]),
    "config-yaml-wrong-type": (lambda tmp, m: _w(tmp / "c.yaml", "optim:\n  lr: fast\n") or
                               TRAIN + ["--config", str(tmp / "c.yaml"), "--out", "x"], ["optim.lr='fast'"]),
    "config-unknown-format": (lambda tmp, m: _w(tmp / "c.ini", "[x]") or
                              TRAIN + ["--config", str(tmp / "c.ini"), "--out", "x"], ["unknown format"]),
    "config-not-utf8": (lambda tmp, m: _w(tmp / "c.toml", b"seed = 1\n\xff\xfe") or
                        TRAIN + ["--config", str(tmp / "c.toml"), "--out", "x"], ["not UTF-8"]),
    # data folders the run cannot use at all
    "data-missing": (lambda tmp, m: TRAIN + ["--data", str(tmp / "none"), "--out", str(tmp / "r")], ["none"]),
    "data-zero-byte-images": (lambda tmp, m: TRAIN + ["--data", str(_data(tmp, {"a.png": b"", "a.txt": "a red circle"})),
                                                      "--out", str(tmp / "r")], ["failed to decode"]),
    "data-truncated-images": (lambda tmp, m: TRAIN + ["--data", str(_data(tmp, {"a.png": _good_png_bytes()[:40],
                                                                                "a.txt": "x"})),
                                                      "--out", str(tmp / "r")], ["failed to decode"]),
    "data-captions-missing": (lambda tmp, m: TRAIN + ["--data", str(_data(tmp, {"a.png": _good_png_bytes()})),
                                                      "--out", str(tmp / "r")], ["caption"]),
    "data-caption-not-utf8": (lambda tmp, m: TRAIN + ["--data", str(_data(tmp, {"a.png": _good_png_bytes(),
                                                                                "a.txt": b"\xff\xfe red"})),
                                                      "--out", str(tmp / "r")], ["a.txt", "UTF-8"]),
    # edit inputs
    "edit-image-missing": (lambda tmp, m: ["edit", str(tmp / "no.png"), P], ["no such file"]),
    "edit-image-folder": (lambda tmp, m: ["edit", str(tmp), P], ["is a folder"]),
    "edit-image-nan-pixels": (lambda tmp, m: _nan_tiff(tmp / "nan.tif") or ["edit", str(tmp / "nan.tif"), P,
                                                                             "--steps", "1"], ["nan.tif", "NaN"]),
    "edit-strength-0": (lambda tmp, m: _png(tmp / "i.png") or ["edit", str(tmp / "i.png"), P, "--strength", "0"],
                        ["--strength"]),
    "edit-strength-nan": (lambda tmp, m: _png(tmp / "i.png") or ["edit", str(tmp / "i.png"), P, "--strength", "nan"],
                          ["--strength"]),
    # odd but valid: works, with a warning where the model cannot follow
    "prompt-5000-words": (["generate", BIG, "--steps", "1"], None),
}


def _nan_tiff(path: Path) -> None:
    import numpy as np
    from PIL import Image

    a = np.full((8, 8), 0.5, dtype=np.float32)
    a[2, 3] = np.nan
    Image.fromarray(a, mode="F").save(path)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "o" != p.relative_to(folder).parts[0]}


def run_cli(capsys, argv) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors exit from inside parse_args
        code = e.code
    except BaseException:  # noqa: BLE001 -- a traceback is exactly what the table forbids
        pytest.fail(f"{argv[:6]} raised instead of a one-line error:\n{traceback.format_exc()}")
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", sorted(CASES))
def test_fuzz_cli(case, capsys, tmp_path, model_dir, monkeypatch):
    argv, needles = CASES[case]
    monkeypatch.chdir(tmp_path)  # "--out x" and the default output folder land here
    user = tmp_path / "user"
    user.mkdir()
    if callable(argv):
        argv = argv(user, model_dir)
    if needles is None and "--out" not in argv:
        argv = argv + ["--out", str(user / "o")]
    before = _snapshot(user)
    try:
        code, err = run_cli(capsys, ["-q"] + argv)
    finally:
        if (user / "ro").is_mount():
            subprocess.run(["umount", str(user / "ro")])
    assert _snapshot(user) == before, "a file the user gave us was changed"
    if needles is None:
        assert code == 0, err
        return
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert code == 2 and len(lines) == 1, f"exit {code}, expected one line:\n{err}"
    assert "error" in lines[0] and "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} missing from {lines[0]!r}"


def test_fuzz_table_covers_the_issue():
    assert len(CASES) >= 60, len(CASES)


def test_bundled_model_warns_about_words_it_does_not_know(caplog):
    from openimagen.preflight import unknown_words, vocabulary_warning

    assert unknown_words("a red circle above a blue square on a gray background") == []
    assert unknown_words('a sign that says "CAT"') == []
    with caplog.at_level("WARNING"):
        msg = vocabulary_warning(["a cat"])
    assert "cat" in msg and "shapes world" in msg and "circle" in msg and msg in caplog.text


def test_every_shapes_world_caption_is_in_the_vocabulary():
    from openimagen.data.shapes import ShapesWorld
    from openimagen.preflight import unknown_words

    world = ShapesWorld(resolution=16, size=400, seed=3, holdout=None)
    assert [c for c in (world.scene_and_caption(i)[1] for i in range(400)) if unknown_words(c)] == []


@pytest.mark.parametrize("argv", [["generate", "a red \udcff circle"],
                                  ["train", "--preset", "shapes-tiny", "--set", "text_encoder=t5", "--out", "x"]])
def test_fuzz_subprocess_has_no_traceback(argv, tmp_path):
    """A few rows as a user runs them: a real process, argv bytes from the shell."""
    env = dict(os.environ, PYTHONPATH=SRC)
    raw = [a.encode("utf-8", "surrogateescape") for a in argv]
    p = subprocess.run([sys.executable.encode(), b"-m", b"openimagen.cli", b"-q", *raw], env=env, cwd=tmp_path,
                       capture_output=True, timeout=120)
    err = p.stderr.decode(errors="replace").strip()
    assert p.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
