"""Tar shards: write/read round trip, shuffling, splitting across nodes and workers, corrupt samples."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from openimagen.data.transforms import to_tensor
from openimagen.data.webdataset import ImageCaptionShards, expand_shards, folder_to_shards, write_shards


def _img(i, size=8):
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _items(n):
    return [{"image": _img(i), "caption": f"caption {i}"} for i in range(n)]


def _read(ds):
    return [(it["caption"], it["image"]) for it in ds]


def test_round_trip(tmp_path):
    paths = write_shards(_items(7), tmp_path, samples_per_shard=3)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    ds = ImageCaptionShards(tmp_path, 8, shuffle_buffer=0, shuffle_shards=False)
    got = _read(ds)
    assert [c for c, _ in got] == [f"caption {i}" for i in range(7)]
    for i, (_, x) in enumerate(got):  # PNG is lossless and the size already matches: exact
        assert torch.equal(x, to_tensor(_img(i)))
    assert ds.skipped == 0


def test_tensor_and_bytes_items_and_json_caption(tmp_path):
    x = to_tensor(_img(3))
    b = io.BytesIO()
    _img(4).save(b, format="PNG")
    write_shards([{"image": x, "caption": "from tensor"}, {"image": b.getvalue(), "caption": "from bytes"}],
                 tmp_path / "a", prefix="a")
    got = _read(ImageCaptionShards(tmp_path / "a", 8, shuffle_buffer=0))
    assert got[0][0] == "from tensor" and torch.equal(got[0][1], x)
    assert got[1][0] == "from bytes" and torch.equal(got[1][1], to_tensor(_img(4)))
    # a .json sidecar with a "caption" key instead of .txt
    with tarfile.open(tmp_path / "j.tar", "w") as tar:
        for name, data in [("s1.png", b.getvalue()), ("s1.json", json.dumps({"caption": "json cap"}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert [c for c, _ in _read(ImageCaptionShards(tmp_path / "j.tar", 8))] == ["json cap"]
    with pytest.raises(ValueError, match="may not contain"):
        write_shards([{"image": x, "caption": "c", "key": "a.b"}], tmp_path / "bad")


def test_shuffle_is_seeded_and_complete(tmp_path):
    write_shards(_items(20), tmp_path, samples_per_shard=5)
    caps = lambda ds: [it["caption"] for it in ds]  # noqa: E731
    ds = ImageCaptionShards(tmp_path, 8, shuffle_buffer=6, seed=1)
    a, b = caps(ds), caps(ds)
    ds.set_epoch(1)
    c = caps(ds)
    assert sorted(a) == sorted(f"caption {i}" for i in range(20))
    assert a == b and a != c and sorted(c) == sorted(a)
    assert a != [f"caption {i}" for i in range(20)]


@pytest.mark.parametrize("n_shards", [4, 1])
def test_split_by_node_is_a_partition(tmp_path, n_shards):
    write_shards(_items(8), tmp_path, samples_per_shard=8 // n_shards)
    parts = [[it["caption"] for it in ImageCaptionShards(tmp_path, 8, rank=r, world_size=2, seed=3)]
             for r in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(f"caption {i}" for i in range(8))
    with pytest.raises(ValueError, match="rank 2"):
        list(ImageCaptionShards(tmp_path, 8, rank=2, world_size=2))


def test_split_by_worker(tmp_path):
    write_shards(_items(6), tmp_path, samples_per_shard=2)
    ds = ImageCaptionShards(tmp_path, 8, shuffle_buffer=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(it["caption"] for it in loader) == sorted(f"caption {i}" for i in range(6))


def test_corrupt_samples_skipped(tmp_path, caplog):
    items = _items(4)
    items[1] = {"image": b"\xff\xd8\xff" + b"garbage" * 20, "caption": "broken jpeg"}
    write_shards(items, tmp_path, samples_per_shard=4)
    # a sample with an image but no caption, in a second shard
    b = io.BytesIO()
    _img(9).save(b, format="PNG")
    with tarfile.open(tmp_path / "shard-000001.tar", "w") as tar:
        info = tarfile.TarInfo("lonely.png")
        info.size = len(b.getvalue())
        tar.addfile(info, io.BytesIO(b.getvalue()))
    ds = ImageCaptionShards(tmp_path, 8, shuffle_buffer=0, shuffle_shards=False)
    with caplog.at_level("WARNING", logger="openimagen.data"):
        got = [c for c, _ in _read(ds)]
    assert got == ["caption 0", "caption 2", "caption 3"]
    assert ds.skipped == 2
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "000000001" in msgs and "has no caption (.txt or .json)" in msgs


def test_truncated_shard_does_not_stop_iteration(tmp_path):
    paths = write_shards(_items(6), tmp_path, samples_per_shard=3)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2 + 100])
    ds = ImageCaptionShards(tmp_path, 8, shuffle_buffer=0, shuffle_shards=False)
    got = [c for c, _ in _read(ds)]
    assert got[-3:] == ["caption 3", "caption 4", "caption 5"] and ds.skipped >= 1


def test_expand_shards(tmp_path):
    write_shards(_items(3), tmp_path, samples_per_shard=1)
    names = [str(tmp_path / f"shard-00000{i}.tar") for i in range(3)]
    assert expand_shards(tmp_path) == names
    assert expand_shards(str(tmp_path / "*.tar")) == names
    assert expand_shards(str(tmp_path / "shard-{000000..000002}.tar")) == names
    with pytest.raises(FileNotFoundError, match="shard-000003.tar"):
        expand_shards(str(tmp_path / "shard-{000000..000003}.tar"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        expand_shards(str(tmp_path / "*.tgz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar shards"):
        expand_shards(tmp_path / "empty")


def test_folder_to_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _img(i).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text(f"folder {i}")
    folder_to_shards(src, tmp_path / "out", samples_per_shard=2)
    got = _read(ImageCaptionShards(tmp_path / "out", 8, shuffle_buffer=0, shuffle_shards=False))
    assert [c for c, _ in got] == ["folder 0", "folder 1", "folder 2"]
    assert torch.equal(got[2][1], to_tensor(_img(2)))
