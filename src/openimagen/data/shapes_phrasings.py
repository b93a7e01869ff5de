"""Captions as people write them: attributes left out, synonyms, digits, other word orders, sentence case.

The templates of `shapes_captions` name every attribute in a few fixed sentences; a model trained only
on them reads "a blue triangle" (no size, no position, no background) as out of distribution. Here a
caption is drawn in two steps:

  1. `leave_out(spec, rng)`: each optional attribute -- the background, and a single object's size and
     position -- is dropped with probability OMIT_P; the picture keeps whatever the renderer drew, so
     a caption that does not say "big" is true of every size.
  2. `natural_caption(spec, rng, family)`: one of the phrasing FAMILIES writes what is left.

FAMILIES (drawn with PHRASING_MIX, seeded by the caller's rng):
  template           the shapes_captions templates, every attribute named (never leaves anything out)
  plain              the template words in short sentences: "a red circle", "three green squares"
  synonyms           other words for the same things: "centred", "beneath", "a pair of", "large", "grey"
  background first   the background before the objects: "on a gray background, a red circle"
Independently of the family (except template): numbers as words, digits or "exactly three" (and
"a pair of" for two), and sentence case with probability SENTENCE_CASE_P ("A red circle").

For every spec and every family, `parse_caption(natural_caption(spec, rng, family)) == spec`.
"""
from __future__ import annotations

import dataclasses
import random

from .shapes_captions import (
    _POSITION_PHRASES, _RELATION_PHRASES, COUNT_WORDS, POSITION_SYNONYMS, RELATION_SYNONYMS, SHAPE_PLURALS,
    SIZE_SYNONYMS, Spec, caption,
)

FAMILIES = ("template", "plain", "synonyms", "background first")
PHRASING_MIX = {"template": 0.25, "plain": 0.3, "synonyms": 0.25, "background first": 0.2}
OMIT_P = 0.5            # each optional attribute is left out with this probability (not in "template")
SENTENCE_CASE_P = 0.5   # "A red circle" rather than "a red circle" (not in "template")
NUMERAL_FORMS = ("word", "digit", "exactly", "pair")   # "pair" ("a pair of") only for two


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def draw_family(rng: random.Random) -> str:
    return rng.choices(list(PHRASING_MIX), weights=list(PHRASING_MIX.values()))[0]


def leave_out(spec: Spec, rng: random.Random, p: float = OMIT_P) -> Spec:
    """`spec` with each optional attribute (background; a single object's size, position) dropped w.p. `p`."""
    bg = None if rng.random() < p else spec.background
    objects = spec.objects
    if spec.kind == "single":
        o = spec.objects[0]
        size = None if rng.random() < p else o.size
        position = None if rng.random() < p else o.position
        objects = (dataclasses.replace(o, size=size, position=position),)
    return dataclasses.replace(spec, objects=objects, background=bg)


def _number(n: int, form: str) -> str:
    if form == "pair" and n == 2:
        return "a pair of"
    if form == "digit":
        return str(n)
    return ("exactly " if form == "exactly" else "") + COUNT_WORDS[n]


def _object(o, rng: random.Random, synonyms: bool) -> str:
    """'a big red circle' / 'a red circle'; synonyms may say 'a large red circle'."""
    words = []
    if o.size is not None:
        words.append(rng.choice(SIZE_SYNONYMS[o.size]) if synonyms else o.size)
    words += [o.color, o.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def _subject(spec: Spec, rng: random.Random, synonyms: bool, numeral: str, lead_in: bool) -> str:
    """The caption without its background; `lead_in`: may start "there is" / "a picture of"."""
    k = spec.kind

    def pick(*forms: str) -> str:   # forms[0] is bare; the rest may start with a lead-in
        return rng.choice(forms if lead_in else [f for f in forms if not f.startswith(("there ", "a picture"))])

    if k == "single":
        o = spec.objects[0]
        obj = _object(o, rng, synonyms)
        if o.position is None:
            return pick(obj, f"there is {obj}", f"a picture of {obj}")
        pos = rng.choice((POSITION_SYNONYMS if synonyms else _POSITION_PHRASES)[o.position])
        return pick(f"{obj} {pos}", f"{obj}, {pos}", f"{pos}, {obj}", f"there is {obj} {pos}")
    if k == "count":
        o = spec.objects[0]
        many = f"{_number(spec.count, numeral)} {o.color} {SHAPE_PLURALS[o.shape]}"
        return pick(many, f"there are {many}", f"a picture of {many}")
    if k in ("relation", "and"):
        a, b = (_object(o, rng, synonyms) for o in spec.objects)
        if k == "and":
            return pick(f"{a} and {b}", f"there is {a} and {b}", f"{a} and also {b}")
        rel = rng.choice((RELATION_SYNONYMS if synonyms else _RELATION_PHRASES)[spec.relation])
        return pick(f"{a} {rel} {b}", f"{a} is {rel} {b}", f"there is {a} {rel} {b}")
    w = spec.word
    if synonyms:
        return rng.choice((f'a sign with "{w}" on it', f"a sign saying {w}", f"the word {w} on a sign",
                           f"a sign that reads {w}"))
    return rng.choice((f"a sign that says {w}", f'a sign that says "{w}"', f"a sign reading {w}"))


def natural_caption(spec: Spec, rng: random.Random, family: str | None = None, *,
                    numeral: str | None = None, sentence_case: bool | None = None) -> str:
    """A caption of `spec` (attributes that are None are not mentioned) in phrasing `family`
    (default: drawn with PHRASING_MIX); `numeral` and `sentence_case` default to random draws."""
    family = draw_family(rng) if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown phrasing family {family!r}; expected one of {FAMILIES}")
    if family == "template":
        return caption(spec, rng)
    if family == "background first" and spec.background is None:
        raise ValueError("the 'background first' family needs a background; leave_out(...) it elsewhere")
    numeral = rng.choice(NUMERAL_FORMS) if numeral is None else numeral
    if numeral not in NUMERAL_FORMS:
        raise ValueError(f"unknown numeral form {numeral!r}; expected one of {NUMERAL_FORMS}")
    text = _subject(spec, rng, family == "synonyms", numeral, lead_in=family != "background first")
    bg = spec.background
    if bg is not None:
        said = "grey" if family == "synonyms" and bg == "gray" and rng.random() < 0.5 else bg
        if family == "background first":
            text = rng.choice((f"on {_article(said)} {said} background, {text}", f"{said} background with {text}",
                               f"against {_article(said)} {said} background, {text}"))
        else:
            text = rng.choice((f"{text} on {_article(said)} {said} background", f"{text}, {said} background",
                               f"{text}. the background is {said}", f"{text} against {_article(said)} {said} background"))
    if sentence_case if sentence_case is not None else rng.random() < SENTENCE_CASE_P:
        text = text[0].upper() + text[1:]
    return text


def draw_caption(spec: Spec, rng: random.Random, omit_p: float = OMIT_P) -> tuple[Spec, str]:
    """The training data's draw: a family from PHRASING_MIX, attributes left out (not in "template";
    "background first" keeps the background), then the caption. Returns (what it says, the caption)."""
    family = draw_family(rng)
    if family != "template":
        said = leave_out(spec, rng, omit_p)
        spec = dataclasses.replace(said, background=spec.background) if family == "background first" else said
    return spec, natural_caption(spec, rng, family)
