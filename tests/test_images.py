"""A user's image and mask files: exact values, every conversion with its one-line note, every refusal."""
import io
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from openimagen import images
from openimagen.data.transforms import to_tensor
from openimagen.images import ImageInputError, file_sha256, image_size, load_image, load_mask


def rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(width, height, bit_depth, color_type, rows: bytes) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB, and a huge header needs no pixels)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def notes(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "openimagen.images"]


# ----------------------------------------------------------------------------- images


def test_rgb_png_loads_exactly(tmp_path, caplog):
    a = rgb()
    Image.fromarray(a).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png")
    assert x.shape == (1, 3, 6, 8) and x.dtype == torch.float32
    assert torch.equal(x[0], to_tensor(Image.fromarray(a)))  # the one [-1, 1] mapping of the project
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
    assert notes(caplog) == []  # nothing converted, nothing said
    assert image_size(tmp_path / "x.png") == (6, 8)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png: no such file"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageInputError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n garbage", b""])
def test_corrupt_files_are_refused_in_one_line(tmp_path, data):
    (tmp_path / "bad.png").write_bytes(data)
    with pytest.raises(ImageInputError, match="bad.png is (not a readable image|corrupt)") as e:
        load_image(tmp_path / "bad.png")
    assert "\n" not in str(e.value) and "PNG or JPEG" in str(e.value)


def test_truncated_png_is_refused(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="cut.png is (corrupt or truncated|not a readable image)"):
        load_image(tmp_path / "cut.png")


def test_transparency_is_composited_on_white_with_a_note(tmp_path, caplog):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255           # red ...
    a[:2, :, 3] = 255         # ... opaque in the top half, transparent below
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING):
        x = load_image(tmp_path / "a.png")
    assert torch.equal(x[0, :, :2], torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 2, 4))  # red kept
    assert (x[0, :, 2:] == 1).all()  # white where it was transparent
    (note,) = notes(caplog)
    assert "a.png" in note and "composited on white" in note and "mask" in note


def test_an_opaque_rgba_image_needs_no_note(tmp_path, caplog):
    a = np.dstack([rgb(4, 4), np.full((4, 4), 255, np.uint8)])
    Image.fromarray(a, "RGBA").save(tmp_path / "o.png")
    with caplog.at_level(logging.WARNING):
        x = load_image(tmp_path / "o.png")
    assert torch.equal(x[0], to_tensor(Image.fromarray(a[..., :3]))) and notes(caplog) == []


def test_16_bit_grayscale_and_rgb_are_reduced_to_8_bits_with_a_note(tmp_path, caplog):
    g = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(g).save(tmp_path / "g16.png")
    rows = b"".join(b"\x00" + struct.pack(">12H", *([65535, 0, 32768] * 4)) for _ in range(4))
    (tmp_path / "rgb16.png").write_bytes(png_bytes(4, 4, 16, 2, rows))
    with caplog.at_level(logging.WARNING):
        a = load_image(tmp_path / "g16.png")
        b = load_image(tmp_path / "rgb16.png")
    assert a.shape == b.shape == (1, 3, 4, 4)
    assert a[0, 0, 0, 0] == -1 and a[0, 0, -1, -1] == 1 and torch.equal(a[0, 0], a[0, 1])  # gray, full range
    assert torch.allclose(b[0, :, 0, 0], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)  # high bytes
    msgs = notes(caplog)
    assert len(msgs) == 2 and all("16-bit depth reduced to 8 bits" in m for m in msgs)


def test_palette_image_is_converted_with_a_note(tmp_path, caplog):
    a = rgb(5, 7)
    p = Image.fromarray(a).quantize(colors=16)
    p.save(tmp_path / "p.png")
    with caplog.at_level(logging.WARNING):
        x = load_image(tmp_path / "p.png")
    assert torch.equal(x[0], to_tensor(p.convert("RGB")))
    (note,) = notes(caplog)
    assert "palette colours converted to RGB" in note


def test_palette_with_transparency_gets_both_notes_in_one_line(tmp_path, caplog):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 255] + [0] * 765)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    with caplog.at_level(logging.WARNING):
        x = load_image(tmp_path / "pt.png")
    assert (x == 1).all()  # every pixel transparent -> white
    (note,) = notes(caplog)
    assert "palette" in note and "composited on white" in note


def test_exif_orientation_is_applied(tmp_path):
    a = rgb(4, 8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert image_size(tmp_path / "phone.jpg") == (8, 4)
    assert load_image(tmp_path / "phone.jpg").shape == (1, 3, 8, 4)


def test_first_frame_of_an_animation_with_a_note(tmp_path, caplog):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        x = load_image(tmp_path / "anim.gif")
    assert x[0, 0].min() > 0.9 and x[0, 1].max() < -0.9  # red: the first frame
    assert "2 frames: the first is used" in notes(caplog)[0]


def test_huge_images_are_refused_with_the_rule(tmp_path, monkeypatch):
    # A header claiming 10000 x 10000 pixels is refused before anything is decoded.
    (tmp_path / "huge.png").write_bytes(png_bytes(10000, 10000, 8, 2, b"\x00"))
    with pytest.raises(ImageInputError, match="huge.png is 10000x10000 .*over the 64-megapixel limit") as e:
        load_image(tmp_path / "huge.png")
    assert "short side = the stage's resolution, aspect kept" in str(e.value) and "shrink it" in str(e.value)
    # Past PIL's own bomb limit (2 x 89 MP) PIL refuses first; the message is ours all the same.
    (tmp_path / "bomb.png").write_bytes(png_bytes(30000, 30000, 8, 2, b"\x00"))
    with pytest.raises(ImageInputError, match="bomb.png is far over the 64-megapixel limit.*shrink it"):
        load_image(tmp_path / "bomb.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 40)
    Image.fromarray(rgb(6, 8)).save(tmp_path / "x.png")
    with pytest.raises(ImageInputError, match="8x6"):
        load_image(tmp_path / "x.png")


def test_sha256_check(tmp_path):
    Image.fromarray(rgb()).save(tmp_path / "x.png")
    digest = file_sha256(tmp_path / "x.png")
    assert torch.equal(load_image(tmp_path / "x.png", sha256=digest), load_image(tmp_path / "x.png"))
    Image.fromarray(rgb(seed=1)).save(tmp_path / "x.png")
    with pytest.raises(ImageInputError, match="not the file the request was made with"):
        load_image(tmp_path / "x.png", sha256=digest)


# ----------------------------------------------------------------------------- masks


def half_mask(h=6, w=8, value=255):
    m = np.zeros((h, w), np.uint8)
    m[: h // 2] = value
    return m


def test_mask_keeps_grey_levels_in_0_1(tmp_path):
    m = half_mask(value=200)
    m[-1, -1] = 100
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", size=(6, 8))
    assert mask.shape == (1, 1, 6, 8) and mask.dtype == torch.float32
    assert torch.equal(mask[0, 0], torch.from_numpy(m).float() / 255)  # thresholded later, after resizing


def test_rgb_and_palette_masks_read_as_luminance(tmp_path):
    m = half_mask()
    Image.fromarray(np.dstack([m] * 3)).save(tmp_path / "rgb.png")
    Image.fromarray(m).convert("P").save(tmp_path / "p.png")
    for name in ("rgb.png", "p.png"):
        assert torch.equal(load_mask(tmp_path / name)[0, 0], torch.from_numpy(m).float() / 255), name


def test_transparent_mask_pixels_mean_keep(tmp_path, caplog):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = 255
    a[:2, :, 3] = 255  # white and opaque on top, white but transparent below
    Image.fromarray(a, "RGBA").save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING):
        mask = load_mask(tmp_path / "m.png")
    assert (mask[0, 0, :2] == 1).all() and (mask[0, 0, 2:] == 0).all()
    assert "transparent pixels read as black (keep)" in notes(caplog)[0]


def test_mask_of_another_size_names_both_sizes(tmp_path):
    Image.fromarray(half_mask(6, 8)).save(tmp_path / "m.png")
    with pytest.raises(ImageInputError, match=r"mask .*m.png is 8x6 but image photo.png is 16x12.*at 16x12"):
        load_mask(tmp_path / "m.png", size=(12, 16), image_name="image photo.png")


def test_empty_and_all_white_masks_say_what_they_mean(tmp_path):
    Image.fromarray(np.full((4, 4), 127, np.uint8)).save(tmp_path / "dark.png")  # under 50%: keep
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(tmp_path / "light.png")  # 50% or more: repaint
    with pytest.raises(ImageInputError, match="black everywhere.*nothing would be repainted.*img2img"):
        load_mask(tmp_path / "dark.png")
    with pytest.raises(ImageInputError, match="white everywhere.*img2img.*openimagen generate"):
        load_mask(tmp_path / "light.png")
    assert load_mask(tmp_path / "light.png", check_coverage=False).min() > 0.5
