"""Fuzz corpus of bad input for the Python API (issue 18): every row raises our typed error (a ValueError or
FileNotFoundError subclass) whose one-line message names the problem; odd-but-valid image files load.
Also: nothing a user hands us is executed (no pickle is ever unpickled), and image i of a batch is the
image of seed + i alone."""
from __future__ import annotations

import io
import pickle
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openimagen import api, images, preflight
from openimagen.config import ConfigError
from openimagen.io.disk import check_output_folder

P = "a red circle"


def _req(**kw):
    return api.GenerateRequest(prompt=[P], **kw)


def _save(path: Path, img) -> Path:
    img.save(path)
    return path


def _nan_tiff(path: Path) -> Path:
    a = np.full((8, 8), 0.5, dtype=np.float32)
    a[1, 1] = np.inf
    return _save(path, Image.fromarray(a, mode="F"))


def _huge_header(path: Path) -> Path:
    """A PNG whose header claims 100000 x 100000 pixels (the data is never decoded)."""
    b = io.BytesIO()
    Image.new("L", (1, 1)).save(b, format="PNG")
    data = bytearray(b.getvalue())
    data[16:24] = (100000).to_bytes(4, "big") * 2  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the IHDR chunk's CRC, made to match
    path.write_bytes(bytes(data))
    return path


def _train(*overrides):
    from openimagen.train import load_train_config

    return lambda tmp: load_train_config("shapes-tiny", None, list(overrides))


# id -> (call(tmp), exception type, regex the message matches)
API_CASES = {
    "request-seed-word": (lambda tmp: _req(seed="lucky"), ValueError, r"seed must be a whole number"),
    "request-precision": (lambda tmp: _req(precision="fp8"), ValueError, r"unknown precision 'fp8'"),
    "request-json-unknown-field": (lambda tmp: api.GenerateRequest.from_json('{"prompt": ["x"], "colour": 1}'),
                                   ValueError, r"unknown request field"),
    "run-empty-prompt": (lambda tmp: api.run(api.GenerateRequest(prompt=[" "])), ValueError, r"empty prompt"),
    "run-control-prompt": (lambda tmp: api.run(_req(negative_prompt="\x00")), ValueError, r"control character"),
    "run-device": (lambda tmp: api.run(_req(), device="tpu"), ValueError, r"--device 'tpu' is not a device"),
    "run-guidance-list-nan": (lambda tmp: api.run(_req(guidance=[2.0, float("nan")])), ValueError, r"finite"),
    "run-seed-negative": (lambda tmp: api.run(_req(seed=-5)), ValueError, r"--seed -5"),
    "run-steps-huge": (lambda tmp: api.run(_req(steps=10**9)), ValueError, r"more than 10000"),
    "train-lr-word": (_train("optim.lr=fast"), ConfigError, r"optim\.lr='fast' must be a finite number"),
    "train-betas-3": (_train("optim.betas=[0.9, 0.9, 0.9]"), ConfigError, r"optim\.betas=.*list of 2"),
    "train-bool-as-int": (_train("seed=true"), ConfigError, r"seed=True must be a whole number"),
    "train-text-encoder-str": (_train("text_encoder=t5"), ConfigError, r'"kind": "t5"'),
    "train-kind-weights-list": (_train("data.kind_weights=[1]"), ConfigError, r"data\.kind_weights"),
    "max-steps-0": (lambda tmp: __import__("openimagen.train", fromlist=["x"]).with_max_steps(_train()(tmp), 0),
                    ValueError, r"max_steps=0"),
    "png-not-ours": (lambda tmp: api.request_from_png(_save(tmp / "x.png", Image.new("RGB", (4, 4)))),
                     ValueError, r"carries no openimagen parameters"),
    "png-not-an-image": (lambda tmp: (tmp / "x.png").write_text("hi") and api.request_from_png(tmp / "x.png"),
                         ValueError, r"not a readable PNG"),
    "image-nan-pixels": (lambda tmp: images.load_image(_nan_tiff(tmp / "n.tif")), ValueError, r"n\.tif.*NaN or inf"),
    "mask-nan-pixels": (lambda tmp: images.load_mask(_nan_tiff(tmp / "m.tif")), ValueError, r"mask .*m\.tif.*NaN"),
    "image-enormous": (lambda tmp: images.load_image(_huge_header(tmp / "big.png")), ValueError, r"megapixel"),
    "image-zero-bytes": (lambda tmp: (tmp / "z.png").write_bytes(b"") or images.load_image(tmp / "z.png"),
                         ValueError, r"z\.png is not a readable image"),
    "out-is-a-file": (lambda tmp: (tmp / "f").write_text("mine") and check_output_folder(tmp / "f"),
                      ValueError, r"is a file"),
    "out-under-a-file": (lambda tmp: (tmp / "f").write_text("mine") and check_output_folder(tmp / "f" / "sub"),
                         ValueError, r"is a file"),
    "embeddings-missing": (lambda tmp: __import__("openimagen.data.embeddings", fromlist=["x"]).EmbeddingCache(tmp),
                           FileNotFoundError, r"no embedding cache"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_fuzz_api(case, tmp_path):
    call, exc, pattern = API_CASES[case]
    with pytest.raises(exc) as e:
        call(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and re.search(pattern, msg), msg


@pytest.mark.parametrize("name, make", [
    ("1x1", lambda: Image.new("RGB", (1, 1), (9, 99, 199))),
    ("cmyk", lambda: Image.new("CMYK", (20, 12), (0, 255, 255, 0))),
    ("16-bit", lambda: Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))),
    ("palette", lambda: Image.new("P", (10, 10), 3)),
    ("rgba", lambda: Image.new("RGBA", (10, 10), (255, 0, 0, 128))),
])
def test_odd_but_valid_images_load_finite(name, make, tmp_path):
    path = tmp_path / f"{name}.{'tif' if name == 'cmyk' else 'png'}"
    make().save(path)
    x = images.load_image(path)
    assert x.shape[:2] == (1, 3) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_animated_images_use_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    x = images.load_image(tmp_path / "a.gif")
    assert x[0, 0].mean() > 0.9 and x[0, 2].mean() < -0.9  # red, the first frame


def test_a_data_folder_skips_a_nan_image_naming_it(tmp_path, caplog):
    from openimagen.data.folders import ImageCaptionFolder

    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "good.png")
    _nan_tiff(tmp_path / "bad.tif")
    for n in ("good", "bad"):
        (tmp_path / f"{n}.txt").write_text("a red square")
    ds = ImageCaptionFolder(tmp_path, 16)
    with caplog.at_level("WARNING"):
        items = [ds[i] for i in range(len(ds))]
    assert all(it["caption"] == "a red square" and torch.isfinite(it["image"]).all() for it in items)
    assert "bad.tif" in caplog.text and "NaN" in caplog.text and ds.skipped == 1


# ----------------------------------------------------------------------------------------------
# nothing executes what a user hands us


class _Payload:
    """A pickle that would create a file when unpickled: proof that nothing was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    return path


def test_no_load_path_unpickles(tmp_path):
    from openimagen.data.embeddings import EmbeddingCache
    from openimagen.io import model_folder
    from openimagen.io.diffusers import read_weights
    from openimagen.train import checkpoint as ckpt

    marker = tmp_path / "EXECUTED"
    # a diffusers folder with only a legacy .bin: read with weights_only=True, so the payload never runs
    _malicious(tmp_path / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ValueError, match="not a readable tensor file"):
        read_weights(tmp_path / "unet")
    # a training checkpoint whose tensors are a pickle
    ckpt.save_checkpoint(tmp_path / "ck", 1, {"step": 1}, [{"model": {"w": torch.zeros(1)}, "ema": {},
                                                           "optim": {"state": {}, "param_groups": []}}], keep=1)
    _malicious(tmp_path / "ck" / "step-0000001" / "stage_0" / "model.safetensors", marker)
    with pytest.raises(ValueError, match="damaged"):
        ckpt.load_checkpoint(tmp_path / "ck" / "step-0000001", 1)
    # an embedding shard that is a pickle
    emb = tmp_path / "emb"
    _malicious(emb / "embeds-000000.safetensors", marker)
    (emb / "index.json").write_text('{"format": "openimagen.embeddings/1", "encoder": {}, "dim": 4, '
                                    '"max_length": 3, "count": 1, "shards": ["embeds-000000.safetensors"]}')
    with pytest.raises(Exception) as e:
        EmbeddingCache(emb).lookup([""])
    assert not isinstance(e.value, (KeyboardInterrupt, SystemExit))
    # a model folder whose weights are a pickle
    m = tmp_path / "model"
    _malicious(m / "stage_0" / "model.safetensors", marker)
    (m / "stage_0" / "config.json").write_text((Path(__file__).parents[1] / "src" / "openimagen" / "assets" /
                                                "shapes-cascade" / "stage_0" / "config.json").read_text())
    (m / "cascade.json").write_text('{"format": "openimagen-cascade", "version": 1, "stages": ["stage_0"]}')
    with pytest.raises(ValueError, match="not a safetensors file"):
        model_folder.load(m)
    assert not marker.exists()


def test_every_torch_load_in_the_source_is_weights_only():
    src = Path(__file__).parents[1] / "src" / "openimagen"
    calls = [(f, line) for f in src.rglob("*.py") for line in f.read_text().splitlines()
             if "torch.load(" in line and not line.strip().startswith("#")]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


def test_a_model_folder_cannot_reach_outside_itself(tmp_path):
    import shutil

    from openimagen.io import model_folder

    bundled = Path(__file__).parents[1] / "src" / "openimagen" / "assets" / "shapes-cascade"
    outside = tmp_path / "outside"
    shutil.copytree(bundled / "stage_0", outside)
    m = tmp_path / "model"
    m.mkdir()
    (m / "stage_0").symlink_to(outside)  # a link out of the folder is as outside as "../"
    for stages in ('["../outside"]', f'["{outside}"]', '["stage_0"]', '["."]'):
        (m / "cascade.json").write_text(f'{{"format": "openimagen-cascade", "version": 1, "stages": {stages}}}')
        with pytest.raises(ValueError, match="outside the model folder"):
            model_folder.load(m)


# ----------------------------------------------------------------------------------------------
# image i of a batch is seed + i


def test_image_i_of_a_batch_is_the_image_of_seed_plus_i(minilm):
    from openimagen.cascade import Cascade

    cascade = Cascade.build(minilm, [("tiny", 16), ("tiny", 32)], steps=3, sampler="ddpm")
    prompts = ["a red circle", "a blue square"]
    batch = cascade.generate(prompts, num_images=3, seed=7, progress=False)
    for j in range(3):
        alone = cascade.generate(prompts, num_images=1, seed=7 + j, progress=False)
        for k in range(2):
            rows = batch.images[k][[j, 3 + j]]  # image j of each prompt (rows are prompt-major)
            assert (rows - alone.images[k]).abs().max() < 1e-5  # batch-size rounding only
    # different images within the batch, and the same noise for every prompt's image j
    assert not torch.equal(batch.images[0][0], batch.images[0][1])


def test_one_group_of_rows_draws_what_one_generator_draws():
    from openimagen.diffusion.noise import RowGenerators, randn

    one = RowGenerators.per_image(3, prompts=4, images=1)
    assert torch.equal(randn((4, 3, 2, 2), one), torch.randn((4, 3, 2, 2), generator=torch.Generator().manual_seed(3)))
    two = RowGenerators.per_image(3, prompts=1, images=2)
    x = randn((2, 5), two)
    assert torch.equal(x[1], torch.randn((1, 5), generator=torch.Generator().manual_seed(4))[0])


def test_the_memory_estimate_refuses_before_work_and_allows_ordinary_batches():
    from openimagen.load import load_model

    cascade = load_model(None)
    assert preflight.estimate_bytes(cascade, 16, 64, 64) < 1e9  # 16 images at 64 px: well under a GB
    with pytest.raises(ValueError, match=r"100000 images at 64x64 px need about .* GB"):
        preflight.check_memory(cascade, 100000, 64, 64)
