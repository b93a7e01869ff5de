"""Prompt expansion: rewrite what a user typed into the caption style the model was trained on.

DALL-E 3 (Betker et al. 2023) trains on long, descriptive captions and has a language model "upsample"
short user prompts into that style before sampling, because a model conditioned only on full
descriptions reads a terse prompt as out of distribution. The shapes world has the same gap, and a
grammar small enough to close it exactly: the bundled model was trained on template captions that
name every attribute (background; a single object's size and position), so "a blue triangle" or
"three green squares" -- true of many pictures -- is read poorly, while "a small blue triangle at the
top on a beige background" is read well (README, "Prompt expansion", has the numbers).

`expand(kind, prompt, seed)` for kind "shapes" parses the prompt with the scorer's parser
(data/shapes_captions.parse_caption, which reads every phrasing of data/shapes_phrasings), keeps every
attribute the prompt names, draws each one it leaves out from the training distribution (as the data
module draws scenes) with a generator seeded by (seed, prompt), and writes the result as a template
caption. "A and B" (two objects, no relation) becomes "A <relation> B" with a drawn relation: the data
module places "and" scenes on a relation's layout, so this is one of the pictures the prompt asks for.
A prompt that is already a template caption, or that the parser cannot read (anything outside the
shapes world), is returned unchanged: expansion never removes what the model could read before.

A model opts in through its folder (`cascade.json`: `"prompt_expansion": "shapes"`; training on the
shapes world writes it); `generate` expands text-to-image prompts of such a model unless told not to
(`expand=False`, CLI `--no-expand`), and records the expanded prompt beside the typed one.
"""
from __future__ import annotations

import dataclasses
import random

KINDS = ("shapes",)


def check_kind(kind) -> str | None:
    """`kind` if it names a known expansion (or is None); else ValueError naming the known ones."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown prompt expansion {kind!r}; known: {list(KINDS)} (or none)")
    return kind


def expand(kind: str, prompt: str, seed: int) -> str:
    """`prompt` in the caption style of expansion `kind`; the same (prompt, seed) always gives the same text."""
    check_kind(kind)
    rng = random.Random(f"prompt-expansion:{kind}:{seed}:{prompt}")  # str seeds are stable across runs
    return expand_shapes(prompt, rng)


def expand_shapes(prompt: str, rng: random.Random) -> str:
    from .data import shapes_captions as sc

    try:
        spec = sc.parse_caption(prompt)
    except ValueError:
        return prompt  # not a shapes-world caption: the model gets it as typed
    if spec.kind != "and" and _complete(spec) and prompt.strip() in template_renderings(spec):
        return prompt
    background = spec.background or rng.choice(sc.BACKGROUND_NAMES)
    objects, relation, kind = spec.objects, spec.relation, spec.kind
    if kind == "single":
        o = objects[0]
        objects = (dataclasses.replace(o, size=o.size or rng.choice(sc.SIZE_NAMES),
                                       position=o.position or rng.choice(sc.POSITION_NAMES)),)
    elif kind == "and":
        kind, relation = "relation", rng.choice(sc.RELATION_NAMES)
    full = dataclasses.replace(spec, kind=kind, objects=objects, background=background, relation=relation)
    return sc.caption(full, rng)


def _complete(spec) -> bool:
    single = [v for o in spec.objects[:1] if spec.kind == "single" for v in (o.size, o.position)]
    return all(v is not None for v in [spec.background, *single])


class _Pick:
    """A stand-in for random.Random whose `choice` takes item `j` (clamped): enumerates template phrasings."""

    def __init__(self, j: int):
        self.j = j

    def choice(self, seq):
        return seq[min(self.j, len(seq) - 1)]


def template_renderings(spec) -> set[str]:
    """Every caption the templates can write for a complete `spec` (each template x each phrase choice)."""
    from .data import shapes_captions as sc

    phrases = max(len(p) for table in (sc._POSITION_PHRASES, sc._RELATION_PHRASES) for p in table.values())
    return {sc.caption(spec, _Pick(j), template=t)
            for t in range(len(sc.TEMPLATES[spec.kind])) for j in range(phrases)}
