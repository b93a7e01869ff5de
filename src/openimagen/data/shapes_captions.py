"""The language of the shapes world: its vocabulary, caption templates, and a parser that reads any
caption back into the attributes it names.

A `Spec` is what a caption says (no coordinates); `shapes.Scene` is what gets drawn. For every
template, `parse_caption(caption(spec, rng)) == spec`, so the scorer can check an image against
any caption the dataset or the benchmark file produces. The templates here name every attribute;
`shapes_phrasings` writes captions as people do (attributes left out, synonyms, digits, other word
orders, sentence case), and the parser reads those too.

Vocabulary rules that keep parsing unambiguous: object colors, background colors, shape names and
sign words are disjoint sets; sign words are upper case and pairwise at edit distance >= 2 (so an
OCR reading one letter off still names a unique word). Signs may also show any 3-5 letter word
(`random_word`), at edit distance >= 2 from every vocabulary word so the two never blur together.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

# ----------------------------------------------------------------------------- vocabulary

COLOR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
BACKGROUND_NAMES = ("gray", "beige", "brown")
SHAPE_NAMES = ("circle", "square", "triangle", "star", "diamond", "cross")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
                 "star": "stars", "diamond": "diamonds", "cross": "crosses"}
SIZE_NAMES = ("small", "big")
POSITION_NAMES = ("left", "right", "top", "bottom", "center")
RELATION_NAMES = ("left of", "right of", "above", "below")   # objects[0] <relation> objects[1]
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
WORDS = ("HI", "OK", "GO", "CAT", "DOG", "SUN", "BOX", "ZOO",
         "FISH", "STOP", "MOON", "BIRD", "TREE", "LAMP", "JUMP", "WAVE")
KINDS = ("single", "relation", "count", "word", "and")   # "and": two objects, no relation between them


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    size: str | None = None        # spoken only in "single" captions
    position: str | None = None    # spoken only in "single" captions


@dataclass(frozen=True)
class Spec:
    """What a caption asserts. kind: single | relation (objects[0] relation objects[1]) | count | word |
    and (objects[0] and objects[1], placed anywhere). None: the caption does not say (drawn freely)."""
    kind: str
    objects: tuple[ObjectSpec, ...] = ()
    background: str | None = None
    relation: str | None = None
    count: int | None = None
    word: str | None = None


# ----------------------------------------------------------------------------- templates
# Each template is a format string over the fields below; every phrase it can produce is read back
# by `parse_caption`. Several phrasings per kind so a model cannot key on one fixed sentence.

_POSITION_PHRASES = {
    "left": ("on the left", "at the left side"),
    "right": ("on the right", "at the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}
_RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
TEMPLATES = {
    "single": (
        "{a_size} {size} {color} {shape} {pos} on a {bg} background",
        "{a_color} {color} {shape}, {size}, {pos}, {bg} background",
        "{Pos}: {a_size} {size} {color} {shape} on a {bg} background",
        "a picture of {a_size} {size} {color} {shape} {pos}. the background is {bg}",
        "there is {a_size} {size} {color} {shape} {pos} on a {bg} background",
    ),
    "relation": (
        "{a_color} {color} {shape} {rel} {a_color2} {color2} {shape2} on a {bg} background",
        "{a_color} {color} {shape} is {rel} {a_color2} {color2} {shape2}, {bg} background",
        "{bg} background with {a_color} {color} {shape} {rel} {a_color2} {color2} {shape2}",
        "a picture of {a_color} {color} {shape} {rel} {a_color2} {color2} {shape2}. the background is {bg}",
    ),
    "count": (
        "{n} {color} {shapes} on a {bg} background",
        "there are {n} {color} {shapes} on a {bg} background",
        "{bg} background with {n} {color} {shapes}",
        "a picture of exactly {n} {color} {shapes}. the background is {bg}",
    ),
    "and": (
        "{a_color} {color} {shape} and {a_color2} {color2} {shape2} on a {bg} background",
        "{bg} background with {a_color} {color} {shape} and {a_color2} {color2} {shape2}",
    ),
    "word": (
        "a sign that says {word} on a {bg} background",
        "a sign reading {word}, {bg} background",
        "the word {word} written on a sign on a {bg} background",
        "a sign with the text {word}. the background is {bg}",
    ),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene, rng: random.Random, template: int | None = None) -> str:
    """A caption for a `Scene` or `Spec`, phrasing drawn from `rng` (or template number `template`)."""
    spec = scene.spec() if hasattr(scene, "spec") else scene
    if spec.kind not in TEMPLATES:
        raise ValueError(f"unknown scene kind {spec.kind!r}; expected one of {KINDS}")
    templates = TEMPLATES[spec.kind]
    if template is None:
        template = rng.randrange(len(templates))
    if not 0 <= template < len(templates):
        raise ValueError(f"template {template} out of range for kind {spec.kind!r} (0..{len(templates) - 1})")
    named = [spec.background] + [v for o in spec.objects[:1] if spec.kind == "single" for v in (o.size, o.position)]
    if any(v is None for v in named):
        raise ValueError(f"the templates name every attribute, but {spec} leaves some out; use "
                         f"shapes_phrasings.natural_caption for such a spec")
    fields: dict[str, object] = {"bg": spec.background}
    if spec.kind in ("single", "relation", "count", "and"):
        o = spec.objects[0]
        fields.update(color=o.color, a_color=_article(o.color), shape=o.shape, shapes=SHAPE_PLURALS[o.shape])
    if spec.kind == "single":
        pos = rng.choice(_POSITION_PHRASES[o.position])
        fields.update(size=o.size, a_size=_article(o.size), pos=pos, Pos=pos[0].upper() + pos[1:])
    elif spec.kind in ("relation", "and"):
        o2 = spec.objects[1]
        fields.update(color2=o2.color, a_color2=_article(o2.color), shape2=o2.shape)
        if spec.kind == "relation":
            fields.update(rel=rng.choice(_RELATION_PHRASES[spec.relation]))
    elif spec.kind == "count":
        fields.update(n=COUNT_WORDS[spec.count])
    else:
        fields.update(word=spec.word)
    return templates[template].format(**fields)


# ----------------------------------------------------------------------------- synonyms
# What people write besides the template words (shapes_phrasings draws from these); the parser reads
# both. Kept apart from the template tables so the template captions stay what they always were.

SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "big": ("big", "large")}
POSITION_SYNONYMS = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "at the top of the picture"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the picture"),
    "center": ("in the middle", "in the centre", "centred", "centered", "in the center"),
}
RELATION_SYNONYMS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath", "underneath"),
}
BACKGROUND_SYNONYMS = {"grey": "gray"}
WORD_KEYWORDS = ("says", "saying", "reading", "reads", "word", "text")


def random_word(rng: random.Random) -> str:
    """A 3-5 capital-letter sign word outside the vocabulary, >= 2 edits from every word in `WORDS`."""
    while True:
        word = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 5)))
        if all(edit_distance(word, w) >= 2 for w in WORDS):
            return word


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (the OCR scorer's tolerance and the random sign words' distance rule)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# ----------------------------------------------------------------------------- parsing

# The sign's word: quoted, else the word after a keyword ("says ZAP", "the word ZAP").
_QUOTED_RE = re.compile(r"[\"“]([A-Za-z]+)[\"”]")
_WORD_RE = re.compile(r"\b(?:" + "|".join(WORD_KEYWORDS) + r")\s+([A-Za-z]+)\b")
_BG_RES = (re.compile(r"\bthe background is (\w+)"),
           re.compile(r"\b(?:(?:on|with|against) an? )?(\w+) background\b"))
_NUMBERS = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4, "pair": 2}
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
                   "center": "center", "middle": "center", "centre": "center", "centred": "center",
                   "centered": "center"}
_SIZE_WORDS = {w: size for size, ws in SIZE_SYNONYMS.items() for w in ws}
_SINGULAR = {p: s for s, p in SHAPE_PLURALS.items()}
_REL_OF_PHRASE = {p: r for table in (_RELATION_PHRASES, RELATION_SYNONYMS) for r, ps in table.items() for p in ps}
# Longest phrases first so "to the left of" wins over "left of".
_REL_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(_REL_OF_PHRASE, key=len, reverse=True)) + r")\b")


def _objects_in(text: str) -> list[tuple[str | None, str, int]]:
    """(color, shape, plural) for each shape word in `text`, with the nearest color word before it."""
    found, color = [], None
    for tok in re.findall(r"[a-z]+", text):
        if tok in COLOR_NAMES:
            color = tok
        elif tok in SHAPE_NAMES or tok in _SINGULAR:
            found.append((color, _SINGULAR.get(tok, tok), tok in _SINGULAR))
            color = None
    return found


def parse_caption(text: str) -> Spec:
    """Read a shapes-world caption back into a `Spec`. Raises ValueError if it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a non-empty shapes-world caption, got {text!r}")
    raw = text.strip()

    def fail(why: str) -> ValueError:
        return ValueError(f"cannot parse shapes-world caption {raw!r}: {why}; "
                          f"see openimagen.data.shapes_captions.TEMPLATES for the grammar")

    background = None
    m = _QUOTED_RE.search(raw) or _WORD_RE.search(raw)
    word = m.group(1).upper() if m else None
    rest = (raw[:m.start(1)] + raw[m.end(1):]) if m else raw   # the word never reads as a color
    rest = rest.lower()
    bm = _BG_RES[0].search(rest) or _BG_RES[1].search(rest)
    if bm:
        background = BACKGROUND_SYNONYMS.get(bm.group(1), bm.group(1))
        if background not in BACKGROUND_NAMES:
            raise fail(f"unknown background {bm.group(1)!r} (known: {', '.join(BACKGROUND_NAMES)})")
        rest = rest[:bm.start()] + " " + rest[bm.end():]
    if word is not None:
        return Spec("word", background=background, word=word)

    rm = _REL_RE.search(rest)
    if rm:
        left, right = _objects_in(rest[:rm.start()]), _objects_in(rest[rm.end():])
        if len(left) != 1 or len(right) != 1 or left[0][0] is None or right[0][0] is None:
            raise fail("a relation needs exactly one colored object on each side")
        objs = tuple(ObjectSpec(c, s) for c, s, _ in (left[0], right[0]))
        return Spec("relation", objs, background, relation=_REL_OF_PHRASE[rm.group(1)])

    tokens = re.findall(r"[a-z0-9]+", rest)
    objs = _objects_in(rest)
    numbers = [_NUMBERS[t] for t in tokens if t in _NUMBERS]
    if len(objs) == 2 and "and" in tokens and not numbers and not any(p for _, _, p in objs):
        if any(c is None for c, _, _ in objs):
            raise fail("each of the two objects needs a color")
        return Spec("and", tuple(ObjectSpec(c, s) for c, s, _ in objs), background)
    if len(objs) != 1 or objs[0][0] is None:
        raise fail("expected one colored shape (or two joined by 'and', a relation, a count, or a sign)")
    color, shape, plural = objs[0]
    if plural or numbers:
        if len(numbers) != 1:
            raise fail("a count caption needs exactly one number among two, three, four")
        return Spec("count", (ObjectSpec(color, shape),), background, count=numbers[0])
    sizes = [_SIZE_WORDS[t] for t in tokens if t in _SIZE_WORDS]
    positions = [_POSITION_WORDS[t] for t in tokens if t in _POSITION_WORDS]
    if len(set(sizes)) > 1 or len(set(positions)) > 1:
        raise fail(f"conflicting sizes {sizes} or positions {positions}")
    size = sizes[0] if sizes else None
    position = positions[0] if positions else None
    return Spec("single", (ObjectSpec(color, shape, size, position),), background)
