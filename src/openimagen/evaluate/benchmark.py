"""The fixed shapes-world benchmarks: captions covering every attribute, one per line.

  assets/benchmark_prompts.txt   ~100 template captions (`generate_benchmark_prompts`)
  assets/benchmark_natural.txt   120 captions as people write them (`generate_natural_prompts`): every
                                 kind ("and" scenes included), every phrasing family of
                                 data/shapes_phrasings.py, attributes left out, numerals as digits and
                                 words, sentence case, and 20 signs with words outside the 16-word
                                 vocabulary; it opens with the issue's own examples (NATURAL_EXAMPLES)

`assets/benchmark_prompts.txt` was written once by `write_benchmark_prompts()` and is committed;
a test checks that the file still equals what the generator produces. Prompts avoid the
combinations in `STANDARD_HOLDOUT`, so a model trained on the standard train split is scored
in-distribution (use `ShapesWorld(split="heldout")` captions to probe generalisation).
"""
from __future__ import annotations

import random
from pathlib import Path

import dataclasses

from openimagen.data.shapes import STANDARD_HOLDOUT, WORDS, caption, sample_scene
from openimagen.data.shapes_captions import random_word
from openimagen.data.shapes_phrasings import FAMILIES, NUMERAL_FORMS, leave_out, natural_caption

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BENCHMARK_PATH = ASSETS / "benchmark_prompts.txt"
NATURAL_BENCHMARK_PATH = ASSETS / "benchmark_natural.txt"
BENCHMARKS = {"templates": BENCHMARK_PATH, "natural": NATURAL_BENCHMARK_PATH}   # `evaluate --prompts NAME`
BENCHMARK_MIX = {"single": 35, "relation": 25, "count": 25, "word": 15}   # prompts per scene kind
# natural file: prompts per kind after the examples; signs: 10 vocabulary words + 20 outside it
NATURAL_MIX = {"single": 30, "relation": 20, "count": 20, "and": 14, "word": 30}
NATURAL_OUTSIDE_WORDS = 20
NATURAL_EXAMPLES = (   # what issue 16 saw fail: plain phrasings the templates never produce
    "three green squares", "three red circles", "a blue triangle", "a sign that says RED",
    'a sign that says "ZAP"', "a green triangle and a blue circle",
)


def generate_benchmark_prompts(seed: int = 2024) -> list[str]:
    rng = random.Random(f"shapes-benchmark:{seed}")
    prompts: list[str] = []
    for kind, n in BENCHMARK_MIX.items():
        seen: set[str] = set()
        while len(seen) < n:
            scene = sample_scene(rng, kind)
            text = caption(scene, rng)
            if not STANDARD_HOLDOUT.contains(scene) and text not in seen:
                seen.add(text)
                prompts.append(text)
    return prompts


def generate_natural_prompts(seed: int = 2026) -> list[str]:
    """The natural-phrasing benchmark: per kind, families taken in turn (so each kind meets each family),
    numeral forms in turn for counts, attributes left out at random; no held-out combination."""
    rng = random.Random(f"shapes-benchmark-natural:{seed}")
    prompts, seen = list(NATURAL_EXAMPLES), set(NATURAL_EXAMPLES)
    for kind, n in NATURAL_MIX.items():
        k = 0
        while k < n:
            scene = sample_scene(rng, kind)
            if kind == "word":   # the first NATURAL_OUTSIDE_WORDS signs spell words outside the vocabulary
                word = random_word(rng) if k < NATURAL_OUTSIDE_WORDS else rng.choice(WORDS)
                scene = dataclasses.replace(scene, word=word)
            family = FAMILIES[k % len(FAMILIES)]
            spec = scene.spec() if family == "template" else leave_out(scene.spec(), rng)
            if family == "background first":
                spec = dataclasses.replace(spec, background=scene.background)
            text = natural_caption(spec, rng, family, numeral=NUMERAL_FORMS[k % len(NUMERAL_FORMS)])
            if not STANDARD_HOLDOUT.contains(scene) and text not in seen:
                seen.add(text)
                prompts.append(text)
                k += 1
    return prompts


def load_benchmark_prompts(name: str = "templates") -> list[str]:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    return [line for line in BENCHMARKS[name].read_text().splitlines() if line.strip()]


def write_benchmark_prompts(path: Path = BENCHMARK_PATH) -> None:
    Path(path).write_text("\n".join(generate_benchmark_prompts()) + "\n")


def write_natural_prompts(path: Path = NATURAL_BENCHMARK_PATH) -> None:
    Path(path).write_text("\n".join(generate_natural_prompts()) + "\n")
