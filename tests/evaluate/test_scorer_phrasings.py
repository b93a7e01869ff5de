"""The scorer on natural phrasings ("and" scenes, attributes left out) and on random sign words."""
import random

import pytest

from openimagen.data.shapes import Obj, Scene, render, sample_scene
from openimagen.data.shapes_captions import random_word
from openimagen.data.shapes_phrasings import draw_caption
from openimagen.evaluate import ocr, score, score_many

needs_tesseract = pytest.mark.skipif(not ocr.tesseract_available(), reason="tesseract-ocr not installed")


def test_natural_captions_of_ground_truth_renders_score_at_least_98_percent():
    rng = random.Random(11)
    images, captions = [], []
    for i in range(60):
        scene = sample_scene(rng, ("single", "relation", "count", "and")[i % 4])
        images.append(render(scene, 64))
        captions.append(draw_caption(scene.spec(), rng)[1])
    report = score_many(images, captions)
    assert {"color", "shape", "count", "relation", "both"} <= set(report.accuracy), report.summary()
    assert all(acc >= 0.98 for acc in report.accuracy.values()), report.summary()


def test_and_scene_needs_both_objects_with_their_shapes():
    red, blue = Obj("red", "triangle", "medium", (0.27, 0.5)), Obj("blue", "circle", "medium", (0.73, 0.5))
    text = "a red triangle and a blue circle"
    assert score(render(Scene("and", (red, blue)), 64), text) == {"color": True, "shape": True, "both": True}
    assert score(render(Scene("and", (blue, red)), 64), text)["both"]   # either side is fine
    one = score(render(Scene("single", (red,)), 64), text)
    assert one["color"] is False and one["both"] is False
    wrong = score(render(Scene("and", (red, Obj("blue", "square", "medium", (0.73, 0.5)))), 64), text)
    assert wrong["color"] and not wrong["shape"] and not wrong["both"]


@needs_tesseract
def test_random_sign_words_are_legible_at_128_px():
    rng = random.Random(12)
    words = [random_word(rng) for _ in range(12)]
    images = [render(Scene("word", word=w), 128) for w in words]
    report = score_many(images, [f'a sign that says "{w}"' for w in words])
    assert report.accuracy["word"] == 1.0, [i for i in report.items if not i["scores"]["word"]]
    assert score(render(Scene("word", word=words[0]), 128), f"a sign that says {words[1]}")["word"] is False


def test_natural_benchmark_file_is_the_committed_generator_output_and_covers_every_phrasing():
    from openimagen.data.shapes import WORDS, parse_caption
    from openimagen.evaluate.benchmark import NATURAL_EXAMPLES, generate_natural_prompts, load_benchmark_prompts
    from openimagen.evaluate.run import read_prompts

    prompts = load_benchmark_prompts("natural")
    assert prompts == generate_natural_prompts() == read_prompts("natural") and len(prompts) >= 100
    assert prompts[:len(NATURAL_EXAMPLES)] == list(NATURAL_EXAMPLES)
    specs = [parse_caption(p) for p in prompts]
    assert {s.kind for s in specs} == {"single", "relation", "count", "word", "and"}
    assert sum(s.kind == "word" and s.word not in WORDS for s in specs) >= 20
    assert any(s.background is None for s in specs) and any(p[0].isupper() for p in prompts)
    assert any(s.kind == "single" and s.objects[0].size is None and s.objects[0].position is None for s in specs)
    for needle in ("a pair of", "exactly", "against", "beneath", "on a gray background, "):
        assert any(needle in p.lower() for p in prompts), needle
    assert any(any(ch.isdigit() for ch in p) for p in prompts)
