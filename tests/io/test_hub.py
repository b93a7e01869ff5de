"""io/hub.py: the one "local folder or hub id" rule, and hub failures that say what to do (no network)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openimagen.io.errors import CheckpointError, HubError
from openimagen.io.hub import from_hub, from_hub_or_dir, local_path, resolve
from openimagen.load import is_deepfloyd


def test_the_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    assert local_path("runs/tiny") == Path("runs/tiny")  # exists: local, though spelled owner/name
    assert local_path("DeepFloyd/IF-I-XL-v1.0") is None  # owner/name, not on disk: a hub id
    for spelled_local in ("./x/y", "/x/y", "~/x", "t5-small", "a/b/c", "a b/c"):
        assert local_path(spelled_local) is not None, spelled_local
    assert local_path("~/x") == Path.home() / "x"
    assert resolve("runs/tiny", "model") == Path("runs/tiny")
    assert resolve("DeepFloyd/IF-I-XL-v1.0", "model") == "DeepFloyd/IF-I-XL-v1.0"
    with pytest.raises(FileNotFoundError, match=r"model ./gone: no such folder, and not a hub id \(owner/name\); "
                                                r"it holds config.json"):
        resolve("./gone", "model", layout="it holds config.json")


def test_loading_uses_the_same_rule(tmp_path):
    (tmp_path / "if" / "unet").mkdir(parents=True)
    (tmp_path / "ours").mkdir()
    assert is_deepfloyd("DeepFloyd/IF-I-XL-v1.0") and is_deepfloyd(str(tmp_path / "if"))
    assert not is_deepfloyd(str(tmp_path / "ours")) and not is_deepfloyd("mymodel")


def test_from_hub_or_dir_calls_the_loader_with_a_local_path_or_the_id(tmp_path):
    calls = []

    def loader(where, **kw):
        calls.append((where, kw))
        return "loaded"

    assert from_hub_or_dir(loader, str(tmp_path), "T5 encoder", variant="fp16") == "loaded"
    assert from_hub_or_dir(loader, "google/t5-v1_1-xxl", "T5 encoder") == "loaded"
    assert calls == [(str(tmp_path), {"variant": "fp16"}), ("google/t5-v1_1-xxl", {})]
    with pytest.raises(FileNotFoundError, match="T5 encoder t5-smal: no such folder"):
        from_hub_or_dir(loader, "t5-smal", "T5 encoder")
    assert len(calls) == 2  # a missing local folder never reaches the loader


def test_hub_failures_are_one_error_that_says_what_to_do():
    class GatedRepoError(OSError):
        pass

    def gated():
        raise GatedRepoError("403 Client Error.\nAccess to model DeepFloyd/IF-I-XL-v1.0 is restricted")

    with pytest.raises(HubError) as e:
        from_hub(gated, "DeepFloyd/IF-I-XL-v1.0", "IF checkpoint", layout="a folder holding unet/")
    msg = str(e.value)
    assert isinstance(e.value, OSError) and isinstance(e.value, CheckpointError)  # callers catch either
    assert "\n" not in msg and "GatedRepoError: 403 Client Error. Access" in msg
    assert "accept its license on https://huggingface.co/DeepFloyd/IF-I-XL-v1.0 and run `hf auth login`" in msg
    assert msg.endswith("`hf download DeepFloyd/IF-I-XL-v1.0`) and pass the local folder instead; "
                        "a folder holding unet/")

    def bug():
        raise KeyError("not a hub failure")

    with pytest.raises(KeyError):  # only download failures are reworded
        from_hub(bug, "a/b", "model")


OFFLINE = """
import socket
socket.socket.connect = socket.getaddrinfo = None  # any use of the network fails the test (TypeError)
from openimagen.io.hub import snapshot
try:
    snapshot("someone/some-model", ["*.json"], "test model")
except OSError as e:
    print(type(e).__name__, e)
"""


def test_offline_hub_id_says_what_to_do(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", OFFLINE], env=env, capture_output=True, text=True, check=True)
    msg = out.stdout.strip()
    assert msg.startswith("HubError could not get the test model 'someone/some-model' from the Hugging Face hub")
    assert "HF_HUB_OFFLINE is set, so only the local cache was searched: unset it to download." in msg
    assert "`hf download someone/some-model`) and pass the local folder instead." in msg
