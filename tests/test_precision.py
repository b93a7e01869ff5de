"""Precision `auto`: bf16 only where the machine computes it natively, fp32 otherwise; explicit bf16 warns once."""
import json
import logging

import pytest
import torch

from openimagen import api, precision
from openimagen.train.presets import TRAIN_PRESETS

CACHED = (precision.bf16_slowdown, precision._warn_emulated_bf16)  # the real ones, before any test patches them


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENIMAGEN_CACHE", str(tmp_path))
    for f in CACHED:
        f.cache_clear()
    yield
    for f in CACHED:
        f.cache_clear()


@pytest.mark.parametrize("native,expected,mixed", [(False, "fp32", "no"), (True, "bf16", "bf16")])
def test_auto_follows_the_capability_check(monkeypatch, native, expected, mixed):
    monkeypatch.setattr(precision, "cpu_bf16_from_flags", lambda: native)
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: pytest.fail("the flags decide; no probe"))
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.training_mixed_precision("auto", "cpu") == mixed
    assert precision.training_mixed_precision("no", "cpu") == "no"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice stays


@pytest.mark.parametrize("ratio,expected", [(90.0, "fp32"), (0.5, "bf16")])
def test_without_flags_the_probe_decides(monkeypatch, ratio, expected):
    monkeypatch.setattr(precision, "cpu_bf16_from_flags", lambda: None)
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: ratio)
    assert precision.resolve_precision("auto", "cpu") == expected


def test_the_probe_is_measured_once_per_machine_and_cached(monkeypatch, tmp_path):
    times = {torch.bfloat16: 0.9, torch.float32: 0.01}
    calls = []
    monkeypatch.setattr(precision, "_time_matmul", lambda dtype: calls.append(dtype) or times[dtype])
    assert precision.bf16_slowdown() == pytest.approx(90.0)
    saved = json.loads((tmp_path / "precision_probe.json").read_text())
    assert saved["machine"] == precision._machine_key() and saved["bf16_over_fp32"] == pytest.approx(90.0)
    precision.bf16_slowdown.cache_clear()  # a new process: reads the file, measures nothing
    monkeypatch.setattr(precision, "_time_matmul", lambda dtype: pytest.fail("cached; no new probe"))
    assert precision.bf16_slowdown() == pytest.approx(90.0)
    (tmp_path / "precision_probe.json").write_text(json.dumps({"machine": "another CPU", "bf16_over_fp32": 1}))
    precision.bf16_slowdown.cache_clear()
    monkeypatch.setattr(precision, "_time_matmul", lambda dtype: times[dtype])
    assert precision.bf16_slowdown() == pytest.approx(90.0)  # another machine's number is not ours


def test_the_real_probe_is_a_ratio_of_two_timings():
    assert 0 < precision.bf16_slowdown() < 1000


def test_explicit_bf16_on_an_emulating_cpu_runs_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_from_flags", lambda: False)
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 87.0)
    with caplog.at_level(logging.WARNING, logger="openimagen"):
        assert precision.resolve_precision("bf16", "cpu") == "bf16"
        assert precision.resolve_precision("bf16", "cpu") == "bf16"
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "87x slower" in warnings[0]


def test_no_warning_where_bf16_is_native(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_from_flags", lambda: True)
    with caplog.at_level(logging.WARNING, logger="openimagen"):
        assert precision.resolve_precision("bf16", "cpu") == "bf16"
    assert not caplog.records


def test_flags_decide_on_x86_linux(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"sse2", "avx2", "fma"})
    assert precision.cpu_bf16_from_flags() is False
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"sse2", "avx512f", "avx512_bf16"})
    assert precision.cpu_bf16_from_flags() is True
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"fp", "asimd", "bf16"})  # ARM: probe instead
    assert precision.cpu_bf16_from_flags() is None


def test_requests_and_presets_default_to_auto(monkeypatch):
    assert api.GenerateRequest(prompt="x").precision == "auto"
    assert api.EditRequest(mode="img2img", image="a.png", prompt="x").precision == "auto"
    assert {name: make().mixed_precision for name, make in TRAIN_PRESETS.items()} == dict.fromkeys(TRAIN_PRESETS, "auto")
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*auto"):
        precision.resolve_precision("fp8")


def test_a_run_records_the_precision_it_chose(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_from_flags", lambda: False)

    class Stop(Exception):
        pass

    def fake_resolve(cascade, request):
        raise Stop(request.precision)

    monkeypatch.setattr(api, "resolve", fake_resolve)
    with pytest.raises(Stop, match="^fp32$"):
        api.run(api.GenerateRequest(prompt="x"), cascade=object())
