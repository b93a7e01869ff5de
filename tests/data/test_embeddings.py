"""Embedding cache: round trip against the encoder, dedup, "" always present, resume, clear errors."""
import json
import pickle
import zlib

import pytest
import torch
from safetensors import safe_open

from openimagen.data.embeddings import (
    EmbeddingCache, EncoderMismatchError, MissingCaptionError, embed_captions,
)


class FakeEncoder:
    """TextEncoder protocol stand-in: one token per word plus an end token, padded to the batch's longest.

    A token's vector depends only on (word, position), so results do not depend on batching; padded
    positions hold noise, as real encoders' do, which a cache must not rely on.
    """

    def __init__(self, dim=8, max_length=6, scale=1.0, name="fake"):
        self.dim, self.max_length, self.scale, self.name = dim, max_length, scale, name
        self.encoded: list[str] = []

    def spec(self):
        return {"kind": self.name, "dim": self.dim, "max_length": self.max_length}

    def _token(self, word, pos):
        g = torch.Generator().manual_seed(zlib.crc32(f"{word}/{pos}".encode()))
        return torch.randn(self.dim, generator=g) * self.scale

    def encode(self, prompts):
        self.encoded.extend(prompts)
        toks = [(p.split() + ["</s>"])[: self.max_length] for p in prompts]
        L = max(len(t) for t in toks)
        emb = torch.randn(len(prompts), L, self.dim)  # padding noise
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, t in enumerate(toks):
            for j, w in enumerate(t):
                emb[i, j] = self._token(w, j)
            mask[i, : len(t)] = True
        return emb, mask


CAPTIONS = ["a red cube", "a blue ball on a table", "a red cube", "two green cones", "a cat",
            "one two three four five six seven eight"]


def _assert_matches(cache, enc, caps, atol=4e-3):
    e, m = cache.lookup(caps)
    ref_e, ref_m = enc.encode(caps)
    assert e.dtype == torch.float32 and m.dtype == torch.bool
    assert e.shape == ref_e.shape and torch.equal(m, ref_m)
    assert torch.allclose(e[m], ref_e[m], atol=atol, rtol=1e-3)  # fp16 storage tolerance
    assert torch.all(e[~m] == 0)  # padding comes back as zeros


def test_round_trip_dedup_and_empty_caption(tmp_path):
    enc = FakeEncoder()
    cache = embed_captions(CAPTIONS, enc, tmp_path, batch_size=3, progress=False)
    unique = set(CAPTIONS) | {""}
    assert sorted(enc.encoded) == sorted(unique)  # each unique caption once, "" included
    assert len(cache) == len(unique) and "" in cache and "a cat" in cache and "a dog" not in cache
    _assert_matches(cache, FakeEncoder(), ["two green cones", "", "a red cube", "a cat"])
    _assert_matches(cache, FakeEncoder(), [CAPTIONS[-1]])  # truncated to max_length by the encoder
    e, m = cache.lookup([""], pad_to=6)
    assert e.shape == (1, 6, 8) and m.tolist() == [[True] + [False] * 5]
    with pytest.raises(ValueError, match="pad_to=1"):
        cache.lookup(["a red cube"], pad_to=1)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["encoder"] == enc.spec() and index["dim"] == 8 and index["max_length"] == 6
    assert index["count"] == len(unique) and index["dtype"] == "float16"


def test_shards_store_only_real_tokens(tmp_path):
    cache = embed_captions(CAPTIONS, FakeEncoder(), tmp_path, shard_size=2, progress=False)
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert [p.name for p in shards] == json.loads((tmp_path / "index.json").read_text())["shards"]
    assert len(shards) == 3  # 6 unique captions incl. "" at 2 per shard
    tokens = 0
    for p in shards:
        with safe_open(p, "pt") as f:
            assert f.get_slice("embeds").get_dtype() == "F16"
            tokens += f.get_slice("embeds").get_shape()[0]
    # words + end token, capped at max_length: no padding stored at all
    assert tokens == sum(min(len(c.split()) + 1, 6) for c in set(CAPTIONS) | {""})
    _assert_matches(cache, FakeEncoder(), list(set(CAPTIONS)))


def test_bfloat16_storage(tmp_path):
    enc = FakeEncoder(scale=1e5)
    with pytest.raises(ValueError, match="bfloat16"):
        embed_captions(["big"], enc, tmp_path / "fp16", progress=False)
    cache = embed_captions(["big"], enc, tmp_path / "bf16", dtype="bfloat16", progress=False)
    e, m = cache.lookup(["big"])
    ref, _ = enc.encode(["big"])
    assert torch.allclose(e, ref, rtol=1e-2, atol=0)


def test_missing_caption_error(tmp_path):
    cache = embed_captions(["a cat"], FakeEncoder(), tmp_path, progress=False)
    with pytest.raises(MissingCaptionError, match=r"1 of 2 captions .*'a dog'.*openimagen embed"):
        cache.lookup(["a cat", "a dog"])
    assert cache.missing(["a dog", "a cat", "a dog"]) == ["a dog"]
    assert isinstance(MissingCaptionError("x"), ValueError)


def test_encoder_spec_mismatch(tmp_path):
    enc = FakeEncoder()
    cache = embed_captions(["a cat"], enc, tmp_path, progress=False)
    cache.check_encoder(enc)
    cache.check_encoder(FakeEncoder().spec())
    with pytest.raises(EncoderMismatchError, match=r"different text encoder .*max_length: 6 vs 77"):
        cache.check_encoder(FakeEncoder(max_length=77))
    with pytest.raises(EncoderMismatchError, match="another text encoder"):
        embed_captions(["a dog"], FakeEncoder(name="t5"), tmp_path, progress=False)


def test_resume_and_incremental(tmp_path):
    enc = FakeEncoder()
    embed_captions(["a cat", "a dog"], enc, tmp_path, shard_size=2, progress=False)
    first = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    # an interrupted second run: a half-written shard and no updated index
    (tmp_path / "embeds-000099.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        EmbeddingCache(tmp_path)
    enc2 = FakeEncoder()
    cache = embed_captions(["a dog", "a cow", "a cat"], enc2, tmp_path, shard_size=2, progress=False)
    assert enc2.encoded == ["a cow"]  # only the new caption is encoded
    assert not list(tmp_path.glob("*.tmp"))
    assert set(first) <= {p.name for p in tmp_path.glob("*.safetensors")}
    assert len(cache) == 4
    _assert_matches(cache, FakeEncoder(), ["a cat", "a cow", "", "a dog"])


def test_pickles_for_dataloader_workers(tmp_path):
    cache = embed_captions(CAPTIONS, FakeEncoder(), tmp_path, progress=False)
    cache.lookup(["a cat"])  # opens files
    clone = pickle.loads(pickle.dumps(cache))
    _assert_matches(clone, FakeEncoder(), ["a cat", "a red cube"])


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="openimagen embed"):
        EmbeddingCache(tmp_path / "none")
    with pytest.raises(ValueError, match="not one string"):
        embed_captions("a cat", FakeEncoder(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        embed_captions(["a"], FakeEncoder(), tmp_path, dtype="int8", progress=False)
