import itertools
import random

import numpy as np
import pytest
import torch

from openimagen.data.shapes import (
    BACKGROUNDS, COLORS, SIZES, STANDARD_HOLDOUT, WORDS, Holdout, Scene, ShapesWorld, caption,
    parse_caption, render, sample_scene,
)
from openimagen.data.shapes_captions import KINDS, TEMPLATES
from openimagen.evaluate.ocr import edit_distance


def _dist(a, b):
    return float(np.linalg.norm(np.subtract(a, b)))


def test_palette_is_well_separated():
    for (n1, c1), (n2, c2) in itertools.combinations(COLORS.items(), 2):
        assert _dist(c1, c2) >= 95, (n1, n2)
    for (n1, c1), (n2, c2) in itertools.product(COLORS.items(), BACKGROUNDS.items()):
        assert _dist(c1, c2) >= 95, (n1, n2)
    assert len(COLORS) >= 8


def test_sign_words_are_two_edits_apart():
    assert all(2 <= len(w) <= 4 and w.isupper() for w in WORDS)
    for a, b in itertools.combinations(WORDS, 2):
        assert edit_distance(a, b) >= 2, (a, b)


def test_item_is_deterministic_and_well_formed():
    a, b = ShapesWorld(32, size=50, seed=3), ShapesWorld(32, size=50, seed=3)
    for i in (0, 7, 49):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"] and x["scene"] == y["scene"]
        assert x["image"].shape == (3, 32, 32) and x["image"].dtype == torch.float32
        assert -1 <= x["image"].min() and x["image"].max() <= 1
        scene = Scene.from_json(x["scene"])
        assert parse_caption(x["caption"]) == scene.spec()
        assert np.array_equal(np.asarray(render(scene, 32)), np.asarray(render(scene, 32)))
    other = ShapesWorld(32, size=50, seed=4)
    assert [other[i]["caption"] for i in range(10)] != [a[i]["caption"] for i in range(10)]
    batch = torch.utils.data.default_collate([a[0], a[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and len(batch["scene"]) == 2


def test_every_template_round_trips():
    rng = random.Random(0)
    for kind in KINDS:
        for _ in range(40):
            scene = sample_scene(rng, kind)
            for t in range(len(TEMPLATES[kind])):
                text = caption(scene, rng, template=t)
                assert parse_caption(text) == scene.spec(), text


def test_parser_reads_free_phrasing_and_rejects_nonsense():
    spec = parse_caption("a red circle")
    assert spec.kind == "single" and spec.objects[0].color == "red" and spec.objects[0].size is None
    assert parse_caption("an orange star to the right of a white cross").relation == "right of"
    assert parse_caption("3 black squares").count == 3
    assert parse_caption('a sign that says "cat"').word == "CAT"
    for bad in ("", "a photo of a dog", "a red circle on a pink background"):
        with pytest.raises(ValueError, match="caption"):
            parse_caption(bad)


def test_scene_contents_follow_the_rules():
    rng = random.Random(1)
    for _ in range(300):
        s = sample_scene(rng)
        for o in s.objects:   # whole object inside the frame
            half = SIZES[o.size] / 2
            assert all(0 < v - half and v + half < 1 for v in o.center)
        if s.kind == "relation":
            assert s.objects[0].color != s.objects[1].color
        if s.kind == "count":
            assert len(s.objects) == s.count and 2 <= s.count <= 4
            assert len({(o.color, o.shape) for o in s.objects}) == 1
        if s.kind == "word":
            assert s.word in WORDS and s.objects == ()


def test_holdout_never_in_train_and_only_in_heldout():
    train = ShapesWorld(16, size=400, seed=0, holdout=STANDARD_HOLDOUT)
    held = ShapesWorld(16, size=60, seed=0, holdout=STANDARD_HOLDOUT, split="heldout")
    assert not any(STANDARD_HOLDOUT.contains(train.scene_and_caption(i)[0]) for i in range(len(train)))
    assert all(STANDARD_HOLDOUT.contains(held.scene_and_caption(i)[0]) for i in range(len(held)))
    # The mirrored relation is the same picture, so it is held out too.
    h = Holdout(relation=frozenset({("circle", "above", "square")}))
    rng = random.Random(0)
    mirrored = next(s for s in (sample_scene(rng, "relation") for _ in range(20000))
                    if s.relation == "below" and s.objects[0].shape == "square" and s.objects[1].shape == "circle")
    assert h.contains(mirrored)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="split"):
        ShapesWorld(split="test")
    with pytest.raises(ValueError, match="holdout"):
        ShapesWorld(split="heldout")
    with pytest.raises(ValueError, match="resolution"):
        ShapesWorld(resolution=4)
    with pytest.raises(ValueError, match="holdout pair"):
        Holdout(color_shape=frozenset({("pink", "circle")}))
    with pytest.raises(ValueError, match="kind"):
        sample_scene(random.Random(0), "scribble")


def test_renders_at_any_resolution():
    scene = sample_scene(random.Random(5), "single")
    for res in (16, 48, 256):
        assert render(scene, res).size == (res, res)


def test_kind_weights_set_the_mix_and_default_to_the_standard_one():
    def kinds(world):
        return [world.scene_and_caption(i)[0].kind for i in range(len(world))]

    default = ShapesWorld(resolution=16, size=400, seed=3)
    # None keeps the standard mix, scene for scene (so existing datasets and caches stay valid)
    assert kinds(ShapesWorld(resolution=16, size=400, seed=3, kind_weights=None)) == kinds(default)
    heavy = kinds(ShapesWorld(resolution=16, size=400, seed=3, kind_weights={"relation": 3, "single": 1}))
    assert set(heavy) == {"relation", "single"}
    assert 0.65 < heavy.count("relation") / 400 < 0.85        # 3:1 -> 75%, binomial sd ~2%
    only = kinds(ShapesWorld(resolution=16, size=50, seed=3, kind_weights={"count": 1.0, "word": 0}))
    assert set(only) == {"count"}


@pytest.mark.parametrize("weights, words", [
    ({"relations": 1}, "unknown scene kind"), ({"single": -1}, ">= 0"), ({"single": 0}, "positive sum"), ({}, "non-empty"),
])
def test_bad_kind_weights_raise(weights, words):
    with pytest.raises(ValueError, match=words):
        ShapesWorld(resolution=16, size=10, kind_weights=weights)
