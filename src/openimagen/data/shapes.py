"""Shapes world: captioned synthetic scenes, drawn procedurally and deterministically from a seed.

Four kinds of scene, each small enough for a tiny diffusion model to learn at 32-64 px:
  single    one object with a color, shape, size (small/big) and position (left/right/top/bottom/center)
  relation  two objects of different colors, objects[0] left of / right of / above / below objects[1]
  count     2-4 identical small objects of one color and shape, in the cells of a 2x2 grid
  word      a light sign with a 2-4 letter capital word (from `WORDS`) in dark letters
  and       two objects of different colors placed like a relation's, whose caption names no relation
            (drawn only when asked for: not in KIND_WEIGHTS, in NATURAL_KIND_WEIGHTS)
Every scene has a named background. Captions (several phrasings per kind) live in `shapes_captions`;
`phrasing="natural"` writes them as people do instead (`shapes_phrasings`: attributes left out, synonyms,
digits, word orders, sentence case), with the natural kind mix, and half the signs show a random 3-5
letter word (`random_word`) rather than a vocabulary one.

    world = ShapesWorld(resolution=64, size=10_000, seed=0, holdout=STANDARD_HOLDOUT)
    item = world[0]   # {"image": (3,64,64) float in [-1,1], "caption": str, "scene": JSON str}
    Scene.from_json(item["scene"])

Coordinates are fractions of the image side, (x, y) with y down, so one scene renders at any
resolution. Shapes are drawn on a 4x supersampled canvas and box-filtered down (antialiasing).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from openimagen.config import from_dict, to_dict
from openimagen.data.shapes_phrasings import OMIT_P, draw_caption
from openimagen.data.shapes_captions import (
    BACKGROUND_NAMES, COLOR_NAMES, KINDS, POSITION_NAMES, RELATION_NAMES, SHAPE_NAMES, SIZE_NAMES,
    WORDS, ObjectSpec, Spec, caption, parse_caption, random_word,
)

__all__ = [
    "COLORS", "BACKGROUNDS", "SIGN_COLOR", "INK_COLOR", "SHAPE_NAMES", "SIZES", "POSITIONS", "WORDS",
    "Obj", "Scene", "Spec", "ObjectSpec", "Holdout", "STANDARD_HOLDOUT", "sample_scene", "render",
    "caption", "parse_caption", "ShapesWorld",
]

# ----------------------------------------------------------------------------- palette and layout
# Object colors are >= ~95 apart in RGB from each other and from every background, so a blurry
# generated pixel still lands nearest its intended name.
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (245, 225, 40),
    "purple": (150, 50, 190), "orange": (245, 130, 20), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = {"gray": (128, 128, 128), "beige": (205, 190, 150), "brown": (110, 80, 60)}
SIGN_COLOR, INK_COLOR = (240, 236, 220), (20, 20, 20)
assert tuple(COLORS) == COLOR_NAMES and tuple(BACKGROUNDS) == BACKGROUND_NAMES

SIZES = {"small": 0.24, "medium": 0.32, "big": 0.40}   # bbox side / image side; "medium" is never spoken
POSITIONS = {"left": (0.22, 0.5), "right": (0.78, 0.5), "top": (0.5, 0.22),
             "bottom": (0.5, 0.78), "center": (0.5, 0.5)}
JITTER = 0.03                 # uniform +- on object centers
COUNT_CELLS = ((0.28, 0.28), (0.72, 0.28), (0.28, 0.72), (0.72, 0.72))
COUNT_JITTER = 0.04
SIGN_BOX = (0.06, 0.29, 0.94, 0.71)   # x0, y0, x1, y1 of the sign
TEXT_SIZE = 0.34                      # font size / image side
TEXT_STROKE = 0.5                     # extra stroke, output pixels: the bundled font is thin at 64 px
KIND_WEIGHTS = {"single": 0.35, "relation": 0.25, "count": 0.25, "word": 0.15}
# phrasing="natural": "and" scenes join in, and signs get more weight (half of them are random words)
NATURAL_KIND_WEIGHTS = {"single": 0.3, "relation": 0.2, "count": 0.2, "and": 0.1, "word": 0.2}
RANDOM_WORD_P = 0.5   # phrasing="natural": share of signs with a random 3-5 letter word
PHRASINGS = ("templates", "natural")
SUPERSAMPLE = 4


def _shape_polygon(shape: str) -> list[tuple[float, float]]:
    """Unit-bbox polygon, centered at 0: every shape fills exactly [-0.5, 0.5]^2 as its bbox."""
    if shape == "square":
        return [(-.5, -.5), (.5, -.5), (.5, .5), (-.5, .5)]
    if shape == "triangle":                       # apex up (y grows downward)
        return [(0, -.5), (.5, .5), (-.5, .5)]
    if shape == "diamond":
        return [(0, -.5), (.5, 0), (0, .5), (-.5, 0)]
    if shape == "cross":                          # plus sign, arms 0.36 wide
        a = 0.18
        return [(-a, -.5), (a, -.5), (a, -a), (.5, -a), (.5, a), (a, a),
                (a, .5), (-a, .5), (-a, a), (-.5, a), (-.5, -a), (-a, -a)]
    if shape == "star":                           # 5 points, inner radius 0.45 of outer
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((r * np.cos(ang), r * np.sin(ang)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        return [((x - cx) / w, (y - cy) / h) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPE_NAMES}")


# ----------------------------------------------------------------------------- scenes

@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str                          # key of SIZES
    center: tuple[float, float]        # (x, y) in image fractions
    position: str | None = None        # named position (single scenes only)


@dataclass(frozen=True)
class Scene:
    kind: str                          # one of KINDS
    objects: tuple[Obj, ...] = ()
    background: str = "gray"
    relation: str | None = None        # relation scenes: objects[0] <relation> objects[1]
    count: int | None = None
    word: str | None = None

    def spec(self) -> Spec:
        """What a caption of this scene says (drops coordinates, and sizes that are never spoken)."""
        if self.kind == "single":
            o = self.objects[0]
            objs = (ObjectSpec(o.color, o.shape, o.size, o.position),)
        elif self.kind in ("relation", "and"):
            objs = tuple(ObjectSpec(o.color, o.shape) for o in self.objects)
        elif self.kind == "count":
            objs = (ObjectSpec(self.objects[0].color, self.objects[0].shape),)
        else:
            objs = ()
        return Spec(self.kind, objs, self.background, self.relation, self.count, self.word)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        return from_dict(cls, json.loads(text), where="Scene")


def _jittered(rng: random.Random, xy: tuple[float, float], jitter: float, extent: float) -> tuple[float, float]:
    lo, hi = 0.02 + extent / 2, 0.98 - extent / 2      # keep the whole object inside the frame
    return tuple(round(min(hi, max(lo, v + rng.uniform(-jitter, jitter))), 4) for v in xy)


def check_kind_weights(weights) -> None:
    """Raise ValueError unless `weights` maps scene kinds to non-negative numbers with a positive sum."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"kind weights must be a non-empty mapping like {KIND_WEIGHTS}, got {weights!r}")
    unknown = [k for k in weights if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown scene kind(s) {unknown} in kind weights; expected keys among {KINDS}")
    if any(not isinstance(w, (int, float)) or not w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"kind weights {weights!r} must be numbers >= 0 with a positive sum")


def sample_scene(rng: random.Random, kind: str | None = None, random_words: float = 0.0) -> Scene:
    """Draw one scene from `rng`. `kind` forces the scene type; by default it follows KIND_WEIGHTS.
    `random_words`: the share of signs that show a `random_word` instead of one of `WORDS`."""
    if kind is None:
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")
    background = rng.choice(BACKGROUND_NAMES)
    if kind == "single":
        size, pos = rng.choice(SIZE_NAMES), rng.choice(POSITION_NAMES)
        center = _jittered(rng, POSITIONS[pos], JITTER, SIZES[size])
        obj = Obj(rng.choice(COLOR_NAMES), rng.choice(SHAPE_NAMES), size, center, pos)
        return Scene(kind, (obj,), background)
    if kind in ("relation", "and"):
        relation = rng.choice(RELATION_NAMES)   # "and": a layout only, never spoken
        c1, c2 = rng.sample(COLOR_NAMES, 2)       # distinct colors tell the two objects apart
        first, second = (0.27, 0.5), (0.73, 0.5)  # first is left of / above second
        if relation in ("above", "below"):
            first, second = first[::-1], second[::-1]
        if relation in ("right of", "below"):
            first, second = second, first
        ext = SIZES["medium"]
        a = Obj(c1, rng.choice(SHAPE_NAMES), "medium", _jittered_rel(rng, first, relation, ext))
        b = Obj(c2, rng.choice(SHAPE_NAMES), "medium", _jittered_rel(rng, second, relation, ext))
        return Scene(kind, (a, b), background, relation=relation if kind == "relation" else None)
    if kind == "count":
        n, color, shape = rng.choice((2, 3, 4)), rng.choice(COLOR_NAMES), rng.choice(SHAPE_NAMES)
        cells = sorted(rng.sample(range(4), n))
        objs = tuple(Obj(color, shape, "small", _jittered(rng, COUNT_CELLS[c], COUNT_JITTER, SIZES["small"]))
                     for c in cells)
        return Scene(kind, objs, background, count=n)
    if random_words and rng.random() < random_words:
        return Scene(kind, (), background, word=random_word(rng))
    return Scene(kind, (), background, word=rng.choice(WORDS))


def _jittered_rel(rng: random.Random, xy, relation: str, extent: float) -> tuple[float, float]:
    # Small jitter along the relation axis, more across it, so the pair is not always aligned.
    along, across = JITTER, 2 * JITTER
    jx, jy = (along, across) if relation in ("left of", "right of") else (across, along)
    x = min(0.98 - extent / 2, max(0.02 + extent / 2, xy[0] + rng.uniform(-jx, jx)))
    y = min(0.98 - extent / 2, max(0.02 + extent / 2, xy[1] + rng.uniform(-jy, jy)))
    return (round(x, 4), round(y, 4))


# ----------------------------------------------------------------------------- holdout

def _canonical_relation(shape_a: str, relation: str, shape_b: str) -> tuple[str, str, str]:
    # "B right of A" shows the same picture as "A left of B": hold both out together.
    if relation == "right of":
        return (shape_b, "left of", shape_a)
    if relation == "below":
        return (shape_b, "above", shape_a)
    return (shape_a, relation, shape_b)


@dataclass(frozen=True)
class Holdout:
    """Combinations never drawn in the train split (and the only ones drawn in the "heldout" split).

    color_shape: (color, shape) pairs, e.g. ("red", "triangle"), in any scene kind.
    relation: (shape_a, relation, shape_b) triples; the mirrored form is held out with it.
    """
    color_shape: frozenset = field(default_factory=frozenset)
    relation: frozenset = field(default_factory=frozenset)

    def __post_init__(self):
        for c, s in self.color_shape:
            if c not in COLOR_NAMES or s not in SHAPE_NAMES:
                raise ValueError(f"holdout pair {(c, s)!r}: color must be in {COLOR_NAMES}, shape in {SHAPE_NAMES}")
        for a, r, b in self.relation:
            if a not in SHAPE_NAMES or b not in SHAPE_NAMES or r not in RELATION_NAMES:
                raise ValueError(f"holdout triple {(a, r, b)!r}: expected (shape, relation, shape) with "
                                 f"relation in {RELATION_NAMES}")
        object.__setattr__(self, "color_shape", frozenset(tuple(p) for p in self.color_shape))
        object.__setattr__(self, "relation", frozenset(_canonical_relation(*t) for t in self.relation))

    def contains(self, scene: Scene) -> bool:
        """True if the scene shows any held-out combination."""
        if any((o.color, o.shape) in self.color_shape for o in scene.objects):
            return True
        if scene.kind == "relation":
            a, b = scene.objects
            return _canonical_relation(a.shape, scene.relation, b.shape) in self.relation
        return False


STANDARD_HOLDOUT = Holdout(
    color_shape=frozenset({("red", "triangle"), ("blue", "star"), ("yellow", "square")}),
    relation=frozenset({("circle", "above", "square"), ("star", "left of", "triangle")}),
)


# ----------------------------------------------------------------------------- rendering

@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font (Pillow >= 10.1): identical on every machine, no system fonts.
    return ImageFont.load_default(size=px)


def render(scene: Scene, resolution: int = 64) -> Image.Image:
    """Draw `scene` as an RGB PIL image of side `resolution` (deterministic: no randomness here)."""
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    ss = max(1, min(SUPERSAMPLE, 2048 // resolution))
    R = resolution * ss
    img = Image.new("RGB", (R, R), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        ext, (cx, cy) = SIZES[o.size] * R, (o.center[0] * R, o.center[1] * R)
        if o.shape == "circle":
            draw.ellipse([cx - ext / 2, cy - ext / 2, cx + ext / 2, cy + ext / 2], fill=COLORS[o.color])
        else:
            draw.polygon([(cx + x * ext, cy + y * ext) for x, y in _shape_polygon(o.shape)], fill=COLORS[o.color])
    if scene.kind == "word":
        x0, y0, x1, y1 = (v * R for v in SIGN_BOX)
        draw.rectangle([x0, y0, x1, y1], fill=SIGN_COLOR)
        font = _font(max(4, int(TEXT_SIZE * R)))
        width = draw.textlength(scene.word, font=font)
        if width > 0.8 * (x1 - x0):   # wide words (MOON, WAVE) shrink to fit the sign
            font = _font(max(4, int(TEXT_SIZE * R * 0.8 * (x1 - x0) / width)))
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), scene.word, fill=INK_COLOR, font=font, anchor="mm",
                  stroke_width=round(TEXT_STROKE * ss), stroke_fill=INK_COLOR)
    if ss > 1:
        img = img.resize((resolution, resolution), Image.BOX)
    return img


# ----------------------------------------------------------------------------- dataset

class ShapesWorld:
    """Map-style dataset of `size` scenes; item i depends only on (seed, split, i).

    split="train" never shows a held-out combination; split="heldout" shows only scenes that
    contain one (needs a holdout). Items are {"image", "caption", "scene"} with "scene" a JSON
    string (`Scene.from_json`), so torch's default collate batches them.

    phrasing="templates" (default) keeps the template captions and KIND_WEIGHTS, scene for scene;
    "natural" draws NATURAL_KIND_WEIGHTS, random sign words (RANDOM_WORD_P) and natural captions
    (shapes_phrasings.PHRASING_MIX), all from the item's own seeded rng.
    """

    def __init__(self, resolution: int = 64, size: int = 10_000, seed: int = 0,
                 holdout: Holdout | None = None, split: str = "train", kinds: tuple[str, ...] | None = None,
                 kind_weights: dict[str, float] | None = None, phrasing: str = "templates",
                 omit_p: float | None = None):
        if phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if split == "heldout" and (holdout is None or not (holdout.color_shape or holdout.relation)):
            raise ValueError("split='heldout' needs a non-empty holdout, e.g. holdout=STANDARD_HOLDOUT")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        for k in kinds or ():
            if k not in KINDS:
                raise ValueError(f"unknown scene kind {k!r} in kinds; expected a subset of {KINDS}")
        if kind_weights is not None:
            check_kind_weights(kind_weights)
            if kinds:
                raise ValueError("pass kinds (uniform over a subset) or kind_weights (a weighted mix), not both")
        if split == "heldout" and kinds == ("word",):
            raise ValueError("word scenes contain no objects, so none can be held out; add another kind")
        self.resolution, self.size, self.seed, self.split = resolution, size, seed, split
        self.holdout, self.kinds = holdout or Holdout(), tuple(kinds) if kinds else None
        self.kind_weights = dict(kind_weights) if kind_weights is not None else None
        self.phrasing = phrasing
        if omit_p is not None and (phrasing != "natural" or not 0 <= omit_p <= 1):
            raise ValueError(f"omit_p={omit_p!r} needs phrasing='natural' and a share in [0, 1] (the share of "
                             "optional attributes its captions leave out; default shapes_phrasings.OMIT_P)")
        self.omit_p = OMIT_P if omit_p is None else float(omit_p)
        if phrasing == "natural" and self.kind_weights is None and not self.kinds:
            self.kind_weights = dict(NATURAL_KIND_WEIGHTS)
        render(Scene("word", word="OK"), resolution)   # validates resolution now, not in a worker

    def __len__(self) -> int:
        return self.size

    def scene_and_caption(self, i: int) -> tuple[Scene, str]:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for ShapesWorld of size {self.size}")
        rng = random.Random(f"shapes-world:{self.seed}:{self.split}:{i}")   # str seeds are stable across runs
        want_held = self.split == "heldout"
        for _ in range(100_000):
            if self.kinds:
                kind = rng.choice(self.kinds)
            elif self.kind_weights:
                kind = rng.choices(list(self.kind_weights), weights=list(self.kind_weights.values()))[0]
            else:
                kind = None   # sample_scene draws it from KIND_WEIGHTS
            if want_held and kind == "word":
                continue
            natural = self.phrasing == "natural"
            scene = sample_scene(rng, kind, random_words=RANDOM_WORD_P if natural else 0.0)
            if self.holdout.contains(scene) == want_held:
                return scene, (draw_caption(scene.spec(), rng, self.omit_p)[1] if natural else caption(scene, rng))
        raise RuntimeError(f"no {self.split} scene found for item {i} in 100000 draws; is the holdout too broad?")

    def __getitem__(self, i: int) -> dict:
        from .transforms import to_tensor  # here, not at the top: scenes and captions need no torch

        scene, text = self.scene_and_caption(int(i))
        return {"image": to_tensor(render(scene, self.resolution)), "caption": text, "scene": scene.to_json()}
