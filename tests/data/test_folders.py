"""ImageCaptionFolder and transforms: caption layouts, corrupt files, clear errors, shapes and ranges."""
import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from openimagen.data.folders import ImageCaptionFolder
from openimagen.data.transforms import (
    ImageTransform, downsample, image_pyramid, load_image, resize, to_pil, to_tensor,
)


def _save(path, size=(40, 30), color=(255, 0, 0), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def _png_bytes(size=(40, 30)):
    rng = np.random.default_rng(0)
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(b, format="PNG")
    return b.getvalue()


# ---------------------------------------------------------------------------------------------- layouts

def test_txt_captions_recursive(tmp_path):
    _save(tmp_path / "a.png", color=(255, 0, 0))
    (tmp_path / "a.txt").write_text("a red square\n")
    _save(tmp_path / "sub" / "b.jpg", color=(0, 0, 255))
    (tmp_path / "sub" / "b.txt").write_text("a blue square")
    ds = ImageCaptionFolder(tmp_path, 16)
    assert len(ds) == 2 and ds.captions == ["a red square", "a blue square"]
    item = ds[0]
    assert item["caption"] == "a red square" and item["index"] == 0
    x = item["image"]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    # pure red: R channel +1, G and B -1 exactly (lossless PNG)
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[1:], -torch.ones(2, 16, 16))
    assert ds[1]["caption"] == "a blue square" and ds[1]["image"][2].mean() > 0.9


def test_metadata_jsonl_text_and_caption_keys(tmp_path):
    _save(tmp_path / "x.png")
    _save(tmp_path / "imgs" / "y.png")
    _save(tmp_path / "imgs" / "z.png")
    (tmp_path / "z.txt").write_text("unused: not next to z.png")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "x.png", "text": "first"}) + "\n\n"
        + json.dumps({"file_name": "imgs/y.png", "caption": "second"}) + "\n")
    (tmp_path / "imgs" / "metadata.jsonl").write_text(json.dumps({"file_name": "z.png", "text": "third"}) + "\n")
    ds = ImageCaptionFolder(tmp_path, 8)
    caps = {p.name: c for p, c in zip(ds.paths, ds.captions)}
    assert caps == {"x.png": "first", "y.png": "second", "z.png": "third"}
    assert [ds[i]["caption"] for i in range(3)] == ds.captions


def test_metadata_overrides_txt_and_bad_json_line(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "from metadata"}) + "\n")
    assert ImageCaptionFolder(tmp_path, 8).captions == ["from metadata"]
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": \n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: not valid JSON"):
        ImageCaptionFolder(tmp_path, 8)


# ---------------------------------------------------------------------------------------------- errors

def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nope", 8)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images found"):
        ImageCaptionFolder(tmp_path, 8)


def test_uncaptioned_images(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("has one")
    _save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"1 of 2 images .* no caption.*b\.txt.*metadata\.jsonl"):
        ImageCaptionFolder(tmp_path, 8)
    assert ImageCaptionFolder(tmp_path, 8, missing_captions="skip").captions == ["has one"]
    assert ImageCaptionFolder(tmp_path, 8, missing_captions="empty").captions == ["has one", ""]


def _corrupt_folder(root):
    good = _png_bytes()
    (root / "a_good.png").write_bytes(good)
    (root / "b_truncated.png").write_bytes(good[: len(good) // 2])
    (root / "c_random.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    (root / "d_empty.png").write_bytes(b"")
    (root / "e_good.png").write_bytes(good)
    for name in ["a_good", "b_truncated", "c_random", "d_empty", "e_good"]:
        (root / f"{name}.txt").write_text(name)


def test_corrupt_files_skipped_lazily(tmp_path, caplog):
    _corrupt_folder(tmp_path)
    ds = ImageCaptionFolder(tmp_path, 8)
    assert len(ds) == 5
    with caplog.at_level(logging.WARNING, logger="openimagen.data"):
        items = [ds[i] for i in range(len(ds))]
    # bad items are replaced by the next good one, deterministically
    assert [it["caption"] for it in items] == ["a_good", "e_good", "e_good", "e_good", "e_good"]
    assert [it["index"] for it in items] == [0, 4, 4, 4, 4]
    assert ds.skipped == 3
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 3 and any("b_truncated.png" in m for m in warned)
    # a second pass does not re-count or re-warn
    _ = [ds[i] for i in range(len(ds))]
    assert ds.skipped == 3
    # through a DataLoader: iteration finishes with every batch full-sized
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batches = list(loader)
    assert sum(len(b["caption"]) for b in batches) == 5 and batches[0]["image"].shape == (2, 3, 8, 8)


def test_corrupt_files_verify_eagerly(tmp_path):
    _corrupt_folder(tmp_path)
    ds = ImageCaptionFolder(tmp_path, 8, verify=True)
    # verify() catches headers and random bytes; the truncated PNG may only fail on full decode
    assert ds.skipped >= 2
    assert {it["caption"] for it in (ds[i] for i in range(len(ds)))} == {"a_good", "e_good"}
    assert ds.skipped == 3


def test_all_corrupt_folder_raises(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"not an image" * i)
        (tmp_path / f"{i}.txt").write_text("x")
    ds = ImageCaptionFolder(tmp_path, 8)
    with pytest.raises(ValueError, match="every image .* failed to decode"):
        ds[1]
    assert ds.skipped == 3
    with pytest.raises(ValueError, match="every image .* failed to decode"):
        ImageCaptionFolder(tmp_path, 8, verify=True)


# ---------------------------------------------------------------------------------------------- transforms

def test_resize_crop_shapes_and_range(tmp_path):
    a = np.zeros((50, 90, 3), dtype=np.uint8)  # H=50, W=90: black left half, white right half
    a[:, 45:] = 255
    img = Image.fromarray(a)
    x = ImageTransform(32)(img)  # short side 50 -> 32, then a centred 32x32 crop across the edge
    assert x.shape == (3, 32, 32) and x.min() == -1 and x.max() == 1
    assert torch.equal(x[:, :, 0], -torch.ones(3, 32)) and torch.equal(x[:, :, -1], torch.ones(3, 32))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    # random crops: reproducible from the generator, different across seeds
    t = ImageTransform(16, resize_to=40, random_crop=True)
    a = t(img, torch.Generator().manual_seed(1))
    b = t(img, torch.Generator().manual_seed(1))
    c = [t(img, torch.Generator().manual_seed(s)) for s in range(2, 6)]
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and any(not torch.equal(a, ci) for ci in c)
    with pytest.raises(ValueError, match="resize_to=8 is smaller than resolution=16"):
        ImageTransform(16, resize_to=8)


def test_to_tensor_round_trip():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    x = to_tensor(img)
    assert x.shape == (3, 12, 10) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert np.array_equal(np.asarray(to_pil(x)), np.asarray(img))


def test_load_image_modes_and_exif(tmp_path):
    # 16-bit grayscale PNG -> 8-bit RGB with the full range preserved
    a16 = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    im = load_image(tmp_path / "g16.png")
    assert im.mode == "RGB" and np.asarray(im).max() == 255 and np.asarray(im).min() == 0
    # fully transparent RGBA composites onto white; palette and LA convert
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png")).min() == 255
    Image.new("RGB", (4, 4), (10, 200, 30)).convert("P").save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").mode == "RGB"
    # EXIF orientation 6 (rotate 90 deg clockwise to display): a 40x20 file shows as 20x40
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (0, 255, 0)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


def test_antialiased_downsample_of_constant_is_constant():
    x = torch.full((3, 64, 64), 0.37)
    for mode in ("bilinear", "bicubic"):
        y = downsample(x, 16, mode=mode)
        assert y.shape == (3, 16, 16) and torch.allclose(y, torch.full_like(y, 0.37), atol=1e-6)


def test_downsample_antialiases_checkerboard():
    # a 1-px checkerboard averages to 0 under an antialiased filter; nearest would keep +-1
    i = torch.arange(64)
    x = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float().expand(3, 64, 64)
    y = downsample(x, 16)
    assert y.abs().max() < 0.05
    assert resize(x, 16, mode="nearest").abs().min() == 1


def test_image_pyramid():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=rng) * 2 - 1
    p = image_pyramid(x, (32, 16, 64))
    assert sorted(p) == [16, 32, 64] and p[64] is x
    assert p[16].shape == (2, 3, 16, 16) and torch.equal(p[32], downsample(x, 32))
    # the largest size is made from the input when it is bigger
    q = image_pyramid(x[0], (8, 32))
    assert q[32].shape == (3, 32, 32) and torch.equal(q[8], downsample(q[32], 8))
    with pytest.raises(ValueError, match="square"):
        image_pyramid(x[..., :32], (16,))
