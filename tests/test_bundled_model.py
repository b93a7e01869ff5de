"""The cascade shipped inside the package: `openimagen generate "..."` works with no other argument."""
from pathlib import Path

import pytest
from PIL import Image

from openimagen.cli import main
from openimagen.evaluate import load_benchmark_prompts, score_many
from openimagen.load import bundled_model_path, load_model


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


def test_bundled_model_is_small_and_complete(bundled):
    folder = bundled_model_path()
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    assert size <= 25e6, f"the bundled model is {size / 1e6:.1f} MB; the package budget is 25 MB"
    assert [s.resolution for s in bundled.stages] == [32, 64]
    assert bundled.text_encoder.spec()["kind"] == "minilm"


def test_generate_with_no_model_writes_both_stages_reproducibly(tmp_path):
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        assert main(["-q", "generate", "--seed", "3", "--out", str(out), "a red circle above a blue square"]) == 0
        runs.append(sorted(out.iterdir()))
    assert [p.name for p in runs[0]] == [p.name for p in runs[1]]
    assert [Image.open(p).size for p in runs[0]] == [(32, 32), (64, 64)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*runs))


def test_bundled_model_draws_the_named_colour_at_the_named_position(bundled):
    # A regression guard on the shipped weights (the full table is in the README): single-object
    # prompts from the benchmark file, one seeded batch (10/10 on both when the model was shipped).
    prompts = load_benchmark_prompts()[:10]
    images = bundled.generate(prompts, seed=0, progress=False).images[-1]
    report = score_many(images, prompts)
    assert report.accuracy["color"] >= 0.7, report.summary()
    assert report.accuracy["position"] >= 0.7, report.summary()


def test_the_shapes_small_recipe_describes_the_shipped_stages():
    # README: `train --preset shapes-small` reproduces the bundled model, sampling defaults included
    import json

    from openimagen.config import to_dict
    from openimagen.train.presets import shapes_small

    for k, st in enumerate(shapes_small().stages):
        shipped = json.loads((Path(bundled_model_path()) / f"stage_{k}" / "config.json").read_text())
        assert json.loads(json.dumps(to_dict(st.stage))) == shipped, f"stage {k}"
