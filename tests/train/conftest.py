"""Shared fixtures of the trainer tests: a tiny cascade config and one text-embedding cache for all runs.

Encoding captions needs the MiniLM encoder (seconds to load); every test run copies one cache built
once per session into its out_dir/embeddings, so the trainer finds every caption there and never
loads the encoder itself.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_OVERRIDES = [
    "data.size=32",
    "stages.0.batch_size=4",
    "stages.1.batch_size=4",
    "stages.0.steps=6",
    "stages.1.steps=6",
    "checkpoint_every=4",
    "log_every=1",
    "sample_steps=2",
    'sample_prompts=["a red circle on a gray background"]',
]


def _tiny_config(*extra: str):
    from openimagen.train import load_train_config

    return load_train_config("shapes-tiny", None, TINY_OVERRIDES + list(extra))


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(*overrides) -> the shapes-tiny TrainConfig shrunk for tests (6 steps per stage)."""
    return _tiny_config


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory, minilm) -> Path:
    """out_dir/embeddings for the tiny config (data.size=32 captions + the sample prompt)."""
    from openimagen.data.embeddings import embed_captions
    from openimagen.train.data import build_dataset, collect_captions

    cfg = _tiny_config()
    folder = tmp_path_factory.mktemp("cache") / "embeddings"
    captions = collect_captions(build_dataset(cfg)) + list(cfg.sample_prompts)
    embed_captions(captions, minilm, folder, progress=False)
    return folder


@pytest.fixture
def run_dir(tmp_path, embedding_cache) -> Path:
    """A fresh out_dir that already holds the session's embedding cache."""
    out = tmp_path / "run"
    shutil.copytree(embedding_cache, out / "embeddings")
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny U-Nets run faster on one thread, and the 2 shared cores are busy with other work anyway."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
