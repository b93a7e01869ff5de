"""Prompt fidelity on the shapes world: does an image show what its caption says, attribute by attribute?

    score(image, "a big red circle on the left on a gray background")
    # {"background": True, "color": True, "shape": True, "size": True, "position": True}
    report = score_many(images, captions); report.accuracy["relation"]

Attributes and how each is decided (see segment.py for how objects are found):
  color       single/count: an object of the named color exists; relation: both named colors exist
  shape       the named-color object's shape (count: a strict majority of them) is the named shape
  size        single: the longer bbox side is nearer that of a clean small or big render of that shape
  position    single: the object's bbox center lies in the named cell of a 3x3 grid
              (left = left column, middle row; top = middle column, top row; center = middle cell)
  count       number of objects of the named color equals the number
  both        "and" scenes: two distinct objects, each of its named color and shape (color and shape
              are also reported, as for a relation)
  relation    the bbox center of objects[0] is displaced from objects[1] by > 0.1 of the image in the
              named direction, and that axis dominates the other (left of: dx < -0.1 and |dx| > |dy|)
  word        Tesseract reads the named word on the sign (None when tesseract is not installed)
  background  the image border's median color is nearest the named background
When the named color is absent, shape / size / position are judged on the largest object of any
color, so a color mistake is counted once, under color; same for count.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from openimagen.data.shapes import parse_caption
from openimagen.evaluate.ocr import OCRUnavailable, read_sign
from openimagen.evaluate.segment import Component, Segmentation, label, opening

ATTRIBUTES = ("color", "shape", "size", "position", "count", "relation", "both", "word", "background")
RELATION_MARGIN = 0.1
_POSITION_CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}


def _cell(v: float) -> int:
    return 0 if v < 1 / 3 else (2 if v > 2 / 3 else 1)


def position_of(comp: Component) -> str:
    cell = (_cell(comp.center[0]), _cell(comp.center[1]))
    for name, c in _POSITION_CELLS.items():
        if c == cell:
            return name
    return {(0, 0): "top-left", (2, 0): "top-right", (0, 2): "bottom-left", (2, 2): "bottom-right"}[cell]


def relation_holds(a: Component, b: Component, relation: str) -> bool:
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]   # a relative to b; y grows downward
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along > RELATION_MARGIN and along > abs(across)


def _sign_box(seg: Segmentation) -> tuple[int, int, int, int] | None:
    """Bounding box of the largest region that differs from the background (the sign with its letters)."""
    far = np.linalg.norm(seg.rgb - seg.background_rgb, axis=-1) > 40
    lab, n = label(opening(far) if seg.filtered else far)
    if n == 0:
        return None
    k = int(np.bincount(lab.ravel())[1:].argmax()) + 1
    ys, xs = np.nonzero(lab == k)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def score(image, caption: str, *, details: bool = False):
    """Per-attribute verdicts {attribute: bool | None} for the attributes `caption` implies.

    `image`: PIL image, tensor (3, H, W) in [-1, 1], or uint8 array (H, W, 3). None means the attribute
    could not be checked (only "word", when tesseract is missing). With details=True returns
    (verdicts, notes) where notes says what was found, for debugging.
    """
    spec = parse_caption(caption)
    seg = Segmentation(image)
    out: dict[str, bool | None] = {}
    notes: dict[str, str] = {}
    if spec.background is not None:
        found = seg.background_name()
        out["background"], notes["background"] = found == spec.background, found

    if spec.kind == "single":
        o = spec.objects[0]
        comps = seg.objects(o.color)
        out["color"] = bool(comps)
        target = comps[0] if comps else next(iter(seg.all_objects()), None)
        notes["color"] = f"{len(comps)} {o.color} object(s)"
        shape = seg.shape_of(target) if target else None
        out["shape"], notes["shape"] = shape == o.shape, str(shape)
        if o.size is not None:
            size = seg.size_of(target) if target else None
            out["size"], notes["size"] = size == o.size, f"{size} (extent {target.extent:.2f})" if target else "none"
        if o.position is not None:
            pos = position_of(target) if target else None
            out["position"], notes["position"] = pos == o.position, f"{pos} {target.center if target else ''}"

    elif spec.kind in ("relation", "and"):
        a, b = spec.objects
        ca, cb = seg.objects(a.color), seg.objects(b.color)
        out["color"] = bool(ca) and bool(cb)
        notes["color"] = f"{len(ca)} {a.color}, {len(cb)} {b.color}"
        # Pick the two distinct objects that best match the named shapes (largest first on ties).
        best, best_key = None, None
        for ta, tb in permutations(dict.fromkeys(ca[:4] + cb[:4]), 2):
            if ta not in ca or tb not in cb:
                continue
            key = ((seg.shape_of(ta) == a.shape) + (seg.shape_of(tb) == b.shape), ta.area + tb.area)
            if best_key is None or key > best_key:
                best, best_key = (ta, tb), key
        verdict = "relation" if spec.kind == "relation" else "both"
        if best is None:
            out["shape"], out[verdict] = False, False
            notes[verdict] = "one of the two objects is missing"
        else:
            ta, tb = best
            out["shape"] = best_key[0] == 2
            notes["shape"] = f"{seg.shape_of(ta)}, {seg.shape_of(tb)}"
            if spec.kind == "relation":
                out["relation"] = relation_holds(ta, tb, spec.relation)
            else:   # both present (the pair exists), each with its shape
                out["both"] = out["shape"]
            notes[verdict] = f"{a.color} at {ta.center}, {b.color} at {tb.center}"

    elif spec.kind == "count":
        o = spec.objects[0]
        comps = seg.objects(o.color)
        out["color"] = bool(comps)
        group = comps or seg.all_objects()
        shapes = Counter(seg.shape_of(c) for c in group)
        out["shape"] = shapes[o.shape] * 2 > len(group)
        out["count"] = len(group) == spec.count
        notes["shape"], notes["count"] = str(dict(shapes)), f"{len(group)} object(s)"

    elif spec.kind == "word":
        box = _sign_box(seg)
        try:
            text = read_sign(seg.raw, box) if box else ""
            out["word"], notes["word"] = text == spec.word, f"read {text!r}"
        except OCRUnavailable as e:
            warnings.warn(f"word attribute unavailable: {e}", stacklevel=2)
            out["word"], notes["word"] = None, f"unavailable: {e}"
    return (out, notes) if details else out


@dataclass
class FidelityReport:
    """Per-attribute accuracy over the prompts that imply the attribute."""
    accuracy: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)        # prompts that were checked per attribute
    unavailable: dict[str, str] = field(default_factory=dict)   # attribute -> why it was not checked
    items: list[dict] = field(default_factory=list)             # per image: {"caption", "scores": {attr: bool|None}}

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "counts": self.counts, "unavailable": self.unavailable,
                "items": self.items}

    def summary(self) -> str:
        parts = [f"{k} {self.accuracy[k]:.1%} (n={self.counts[k]})" for k in ATTRIBUTES if k in self.accuracy]
        parts += [f"{k} unavailable" for k in self.unavailable]
        return ", ".join(parts)


def score_many(images, captions) -> FidelityReport:
    """Score each (image, caption) pair; `images` is a list or a batched tensor (B, 3, H, W) in [-1, 1]."""
    captions = list(captions)
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions; pass one caption per image")
    hits: Counter = Counter()
    totals: Counter = Counter()
    report = FidelityReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # one note in the report instead of a warning per image
        for image, text in zip(images, captions):
            verdicts, notes = score(image, text, details=True)
            report.items.append({"caption": text, "scores": dict(verdicts)})
            for k, v in verdicts.items():
                if v is None:
                    report.unavailable[k] = notes[k]
                    continue
                totals[k] += 1
                hits[k] += bool(v)
    report.accuracy = {k: hits[k] / totals[k] for k in ATTRIBUTES if totals[k]}
    report.counts = {k: totals[k] for k in ATTRIBUTES if totals[k]}
    return report
