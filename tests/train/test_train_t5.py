"""A T5 text encoder trains a cascade: `openimagen embed`, then `train`, killed, resumed with --resume; the
run reuses its embedding cache throughout (the T5's spec is written in one place, text.py) and ends with
the weights of a run never killed.

The T5 is random and tiny, its tokenizer built here (tests/checkpoints/tiny_if.py), so nothing is fetched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "checkpoints"))
from test_train_resume import SRC, _final_state, _log_steps, _wait_until  # noqa: E402
from tiny_if import tiny_t5, tiny_tokenizer  # noqa: E402

# One training run in a fresh process, as in test_train_resume, from a complete config file.
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from openimagen.train import load_train_config, train
train(load_train_config(None, sys.argv[2]), sys.argv[1], resume=True, progress=False)
"""


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-t5")
    tok = tiny_tokenizer()
    tok.save_pretrained(folder)
    tiny_t5(len(tok)).save_pretrained(folder)
    return folder


def _t5_overrides(folder: Path) -> list[str]:
    # The training code once restated the T5 spec without clean_caption and variant, which the encoder's own
    # spec (in the cache index) has: its cache check then refused the run's own cache after `embed`.
    spec = {"kind": "t5", "name_or_path": str(folder), "max_length": 24}
    return [f"text_encoder={json.dumps(spec)}", "stages.0.stage.unet.text_embed_dim=32",
            "stages.1.stage.unet.text_embed_dim=32"]


def _start(out: Path, config_file: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(config_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _cache_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_t5_run_embeds_once_resumes_and_matches_an_uninterrupted_run(tmp_path, t5_folder, tiny_config,
                                                                     monkeypatch):
    from openimagen.cli import main
    from openimagen.config import to_dict
    from openimagen.train import checkpoint as ckpt
    from openimagen.train import train

    cfg = tiny_config(*_t5_overrides(t5_folder))
    config_file = tmp_path / "t5-tiny.json"  # a complete config: `embed` and every leg of `train` read it
    config_file.write_text(json.dumps(to_dict(cfg)))
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["-q", "embed", "--config", str(config_file), "--out", str(a)]) == 0
    index = json.loads((a / "embeddings" / "index.json").read_text())
    assert index["encoder"] == to_dict(cfg.text_encoder) and index["dim"] == 32
    shutil.copytree(a / "embeddings", b / "embeddings")
    cache = _cache_files(a / "embeddings")

    run_a = _start(a, config_file)  # uninterrupted; runs alongside the first leg of b
    p = _start(b, config_file)
    _wait_until(p, lambda: _log_steps(b) >= 6, "step 6")  # after the step-4 checkpoint, before the next
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt.find_checkpoint(b / "checkpoints").name == "step-0000004"

    # the resumed leg, in this process: the cache holds every caption, so the T5 is never loaded again
    def no_t5(*args, **kwargs):
        raise AssertionError("the T5 was loaded although the embedding cache holds every caption")

    monkeypatch.setattr("openimagen.text.T5Encoder.__init__", no_t5)
    train(cfg, b, resume=True, progress=False)
    out, _ = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, out.decode()[-3000:]

    for run in (a, b):
        assert _cache_files(run / "embeddings") == cache  # as `embed` wrote it: nothing re-encoded or added
    sa, sb = _final_state(a), _final_state(b)
    assert sa.keys() == sb.keys() and len(sa) > 50
    assert all(sa[k].equal(sb[k]) for k in sa), [k for k in sa if not sa[k].equal(sb[k])][:5]  # bitwise
    la = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lb] == list(range(1, 13)) and [x["loss"] for x in la] == [x["loss"] for x in lb]
    saved = json.loads((b / "model" / "cascade.json").read_text())["text_encoder"]
    assert saved == index["encoder"]  # the trained model rebuilds the encoder it was trained with
