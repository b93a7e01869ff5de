import dataclasses
import itertools
import random
from collections import Counter

import pytest

from openimagen.data.shapes import (
    NATURAL_KIND_WEIGHTS, WORDS, ShapesWorld, Scene, caption, parse_caption, render, sample_scene,
)
from openimagen.data.shapes_captions import KINDS, random_word
from openimagen.data.shapes_phrasings import (
    FAMILIES, NUMERAL_FORMS, PHRASING_MIX, leave_out, natural_caption,
)
from openimagen.evaluate.ocr import edit_distance


def _specs(n, seed):
    """Random specs of every kind, each with a random subset of its optional attributes left out."""
    rng = random.Random(seed)
    for i in range(n):
        scene = sample_scene(rng, KINDS[i % len(KINDS)], random_words=0.5)
        yield scene.spec(), leave_out(scene.spec(), rng, p=rng.choice((0.0, 0.5, 1.0)))


def test_every_family_numeral_and_case_round_trips():
    rng = random.Random(0)
    checked = Counter()
    for full, said in _specs(250, seed=1):
        for family, numeral, upper in itertools.product(FAMILIES, NUMERAL_FORMS, (False, True)):
            spec = full if family == "template" else said
            if family == "background first" and spec.background is None:
                spec = dataclasses.replace(spec, background=full.background)
            text = natural_caption(spec, rng, family, numeral=numeral, sentence_case=upper)
            assert parse_caption(text) == spec, (family, text)
            checked[family, spec.kind] += 1
    assert set(checked) == set(itertools.product(FAMILIES, KINDS))


def test_leaving_everything_out_still_names_the_objects():
    rng = random.Random(2)
    assert natural_caption(parse_caption("a blue triangle"), rng, "plain", sentence_case=False) in (
        "a blue triangle", "there is a blue triangle", "a picture of a blue triangle")
    for text, want in (("3 green squares", 3), ("exactly three red circles", 3), ("a pair of red stars", 2),
                       ("Four white crosses", 4)):
        assert parse_caption(text).count == want, text
    s = parse_caption("on a grey background, a large red circle, centred")
    assert (s.background, s.objects[0].size, s.objects[0].position) == ("gray", "big", "center")
    assert parse_caption("a red circle beneath a blue square").relation == "below"
    both = parse_caption("A red triangle and a blue circle")
    assert both.kind == "and" and [o.color for o in both.objects] == ["red", "blue"] and both.relation is None
    assert parse_caption('a sign with "ZAP" on it').word == "ZAP"
    with pytest.raises(ValueError, match="color"):
        parse_caption("a triangle and a blue circle")


def test_natural_world_is_seeded_and_follows_the_documented_mix():
    a, b = ShapesWorld(16, size=600, seed=5, phrasing="natural"), ShapesWorld(16, size=600, seed=5, phrasing="natural")
    items = [a.scene_and_caption(i) for i in range(len(a))]
    assert items[:20] == [b.scene_and_caption(i) for i in range(20)]
    for scene, text in items:   # the caption is true of the picture: what it says matches the scene
        said, full = parse_caption(text), scene.spec()
        assert said.kind == full.kind and said.word == full.word and said.count == full.count
        assert said.background in (None, full.background)
        for o, f in zip(said.objects, full.objects):
            assert (o.color, o.shape) == (f.color, f.shape) and o.size in (None, f.size)
    kinds = Counter(s.kind for s, _ in items)
    for k, w in NATURAL_KIND_WEIGHTS.items():   # binomial sd <= 2% at n=600
        assert abs(kinds[k] / len(items) - w / sum(NATURAL_KIND_WEIGHTS.values())) < 0.07, kinds
    words = [s.word for s, _ in items if s.kind == "word"]
    assert 0.3 < sum(w not in WORDS for w in words) / len(words) < 0.7
    # the template world is untouched by the option
    plain = ShapesWorld(16, size=50, seed=5)
    assert [plain.scene_and_caption(i) for i in range(50)] == [
        ShapesWorld(16, size=50, seed=5, phrasing="templates").scene_and_caption(i) for i in range(50)]


def test_family_draws_follow_phrasing_mix():
    from openimagen.data.shapes_phrasings import draw_family

    rng = random.Random(3)
    drawn = Counter(draw_family(rng) for _ in range(4000))
    for family, w in PHRASING_MIX.items():
        assert abs(drawn[family] / 4000 - w) < 0.03, drawn


def test_random_words_are_short_capitals_far_from_the_vocabulary():
    rng = random.Random(4)
    for _ in range(300):
        w = random_word(rng)
        assert 3 <= len(w) <= 5 and w.isalpha() and w.isupper()
        assert min(edit_distance(w, v) for v in WORDS) >= 2


def test_bad_phrasing_arguments_raise():
    spec = sample_scene(random.Random(0), "count").spec()
    with pytest.raises(ValueError, match="phrasing family"):
        natural_caption(spec, random.Random(0), "poetry")
    with pytest.raises(ValueError, match="numeral"):
        natural_caption(spec, random.Random(0), "plain", numeral="roman")
    with pytest.raises(ValueError, match="templates name every attribute"):
        caption(dataclasses.replace(spec, background=None), random.Random(0))
    with pytest.raises(ValueError, match="phrasing"):
        ShapesWorld(16, size=4, phrasing="poetry")


def test_and_scenes_render_two_distinct_colored_objects():
    rng = random.Random(6)
    for _ in range(50):
        s = sample_scene(rng, "and")
        assert s.relation is None and len(s.objects) == 2 and s.objects[0].color != s.objects[1].color
        assert Scene.from_json(s.to_json()) == s
    assert render(s, 32).size == (32, 32)


def test_omit_p_sets_how_often_natural_captions_leave_attributes_out():
    def left_out(world):
        n = 0
        for i in range(len(world)):
            s = parse_caption(world.scene_and_caption(i)[1])
            n += (s.background is None) + sum(v is None for o in s.objects[:1] if s.kind == "single"
                                               for v in (o.size, o.position))
        return n
    full = ShapesWorld(16, size=300, seed=2, phrasing="natural", omit_p=0.0)
    assert left_out(full) == 0   # phrasings vary, every attribute named: what prompt expansion writes
    assert left_out(ShapesWorld(16, size=300, seed=2, phrasing="natural")) > 50   # the default OMIT_P = 0.5
    # the same scenes and the same random stream: only the omissions differ
    assert [full.scene_and_caption(i)[0] for i in range(20)] == [
        ShapesWorld(16, size=300, seed=2, phrasing="natural").scene_and_caption(i)[0] for i in range(20)]
    with pytest.raises(ValueError, match="omit_p=0.5 needs phrasing='natural'"):
        ShapesWorld(16, size=4, omit_p=0.5)
    with pytest.raises(ValueError, match=r"omit_p=1.5 needs .* \[0, 1\]"):
        ShapesWorld(16, size=4, phrasing="natural", omit_p=1.5)


def test_omit_p_in_a_training_config_is_checked():
    from openimagen.config import ConfigError
    from openimagen.train import load_train_config

    assert load_train_config("shapes-small", None, ["data.phrasing=natural", "data.omit_p=0.2"]).data.omit_p == 0.2
    with pytest.raises(ConfigError, match="data.omit_p=0.2 needs data.phrasing='natural'"):
        load_train_config("shapes-small", None, ["data.omit_p=0.2"])
