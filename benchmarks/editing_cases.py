"""The cases and success criteria of the editing benchmark (bench_editing.py), with no model in sight.

Every case is a shapes-world scene whose geometry the renderer knows (data/shapes.py), so what an edit
should produce is known too, and every verdict is read by the prompt-fidelity scorer's segmentation
(evaluate/segment.py), not by eye:

    inpaint   a two-object (relation) scene; the mask is one object's bounding box grown by PAD on every
              side; the caption is the scene with that object's colour or shape changed. Success = a
              component of the new colour, centred in the box, reads as the new shape; nothing in the box
              still reads as the old object; outside the mask the image is unchanged (UNCHANGED_TOL).
    img2img   a scene of any kind; its own caption (layout kept?) and a new caption: the same layout with
              every object's colour and shape changed (a sign: another word).
    outpaint  a one-object scene with its object on the far side; the canvas grows by a quarter of the
              width on the other side and the caption adds an object there ("old left of new", ...).
              Success = a component of the new colour, centred in the new area, reads as the new shape;
              the original pixels are unchanged.
    upscale   PSNR and SSIM against the 64 px render (psnr, ssim: written here, no extra dependency).

Case lists depend only on (task, seed, n). Scenes never show a combination the bundled model was held
out from (data/shapes.py STANDARD_HOLDOUT), so it is scored in-distribution.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from openimagen.data.shapes import (
    COLORS, SHAPE_NAMES, SIZES, STANDARD_HOLDOUT, WORDS, Obj, Scene, caption, render, sample_scene,
)
from openimagen.data.transforms import to_tensor
from openimagen.evaluate.segment import Segmentation

RES = 64                 # a stage size of the bundled cascade (its second): every case is rendered and judged here
PAD = 0.06               # the inpainting mask: the object's box grown by this fraction of the side (~4 px)
UNCHANGED_TOL = 2        # "unchanged": every kept pixel within 2/255 of the input (both rounded to 8 bits)
OUTPAINT_FRACTION = 4    # the canvas grows by width // 4 (the "a quarter of its width")
FAR_SIDE = {"right": "left", "left": "right", "bottom": "top", "top": "bottom"}   # where the old object sits
# The caption of the grown canvas: the old object first, then how it relates to the new one.
RELATION_FOR = {"right": "left of", "left": "right of", "bottom": "above", "top": "below"}

Box = tuple[float, float, float, float]   # x0, y0, x1, y1 in fractions of the image width / height


def _rng(task: str, seed: int) -> random.Random:
    return random.Random(f"bench-editing:{task}:{seed}")   # str seeds are stable across runs and machines


def _other(rng: random.Random, pool, *avoid) -> str:
    return rng.choice([x for x in pool if x not in avoid])


def as_tensor(scene: Scene, res: int = RES) -> Tensor:
    return to_tensor(render(scene, res))   # (3, res, res) in [-1, 1]


def object_box(obj: Obj, pad: float = PAD) -> Box:
    e = SIZES[obj.size] / 2 + pad
    (cx, cy) = obj.center
    return (max(0.0, cx - e), max(0.0, cy - e), min(1.0, cx + e), min(1.0, cy + e))


def box_mask(box: Box, h: int, w: int) -> Tensor:
    """(1, 1, h, w): 1 on every pixel the box touches (so the object's antialiased rim is inside)."""
    x0, y0, x1, y1 = box
    m = torch.zeros(1, 1, h, w)
    m[..., int(np.floor(y0 * h)):int(np.ceil(y1 * h)), int(np.floor(x0 * w)):int(np.ceil(x1 * w))] = 1
    return m


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ----------------------------------------------------------------------------------------------
# cases


def inpaint_cases(n: int, seed: int = 0) -> list[dict]:
    """Two-object scenes, one object changed: colour on even cases, shape on odd ones."""
    rng, out = _rng("inpaint", seed), []
    while len(out) < n:
        scene = sample_scene(rng, "relation")
        k = rng.randrange(2)
        old, other = scene.objects[k], scene.objects[1 - k]
        if len(out) % 2 == 0:
            new, change = dataclasses.replace(old, color=_other(rng, COLORS, old.color, other.color)), "color"
        else:
            new, change = dataclasses.replace(old, shape=_other(rng, SHAPE_NAMES, old.shape)), "shape"
        objs = list(scene.objects)
        objs[k] = new
        edited = dataclasses.replace(scene, objects=tuple(objs))
        box = object_box(old)
        if STANDARD_HOLDOUT.contains(scene) or STANDARD_HOLDOUT.contains(edited) or _overlaps(box, object_box(other, 0)):
            continue   # the mask must not touch the object that stays
        out.append(dict(scene=scene, edited=edited, index=k, change=change, box=box, old=old, new=new,
                        caption=caption(edited, rng)))
    return out


def _restyled(rng: random.Random, scene: Scene) -> Scene:
    """The same layout with every object's colour and shape changed (distinct colours stay distinct)."""
    if scene.kind == "word":
        return dataclasses.replace(scene, word=_other(rng, WORDS, scene.word))
    if scene.kind == "relation":
        a, b = scene.objects
        ca = _other(rng, COLORS, a.color)
        cb = _other(rng, COLORS, b.color, ca)
        objs = (dataclasses.replace(a, color=ca, shape=_other(rng, SHAPE_NAMES, a.shape)),
                dataclasses.replace(b, color=cb, shape=_other(rng, SHAPE_NAMES, b.shape)))
    else:   # single, count: one colour and shape for all
        o = scene.objects[0]
        color, shape = _other(rng, COLORS, o.color), _other(rng, SHAPE_NAMES, o.shape)
        objs = tuple(dataclasses.replace(x, color=color, shape=shape) for x in scene.objects)
    return dataclasses.replace(scene, objects=objs)


def img2img_cases(n: int, seed: int = 0, *, words: bool = True) -> list[dict]:
    """Scenes of every kind (the training mix; signs only when OCR can read them) and a restyled caption."""
    rng, out = _rng("img2img", seed), []
    while len(out) < n:
        scene = sample_scene(rng)
        if scene.kind == "word" and not words:
            continue
        new = _restyled(rng, scene)
        if STANDARD_HOLDOUT.contains(scene) or STANDARD_HOLDOUT.contains(new):
            continue
        out.append(dict(scene=scene, new_scene=new, caption=caption(scene, rng), new_caption=caption(new, rng)))
    return out


def outpaint_cases(n: int, seed: int = 0, *, fraction: int = OUTPAINT_FRACTION) -> list[dict]:
    """One-object scenes with the object away from the side that grows (sides in turn), and a caption
    that adds an object of another colour in the new area."""
    from openimagen.data.shapes_captions import ObjectSpec, Spec

    rng, out, sides = _rng("outpaint", seed), [], list(RELATION_FOR)
    while len(out) < n:
        side = sides[len(out) % 4]
        scene = sample_scene(rng, "single")
        o = scene.objects[0]
        if o.position != FAR_SIDE[side] or STANDARD_HOLDOUT.contains(scene):
            continue
        color, shape = _other(rng, COLORS, o.color), rng.choice(SHAPE_NAMES)
        if (color, shape) in STANDARD_HOLDOUT.color_shape:
            continue
        spec = Spec("relation", (ObjectSpec(o.color, o.shape), ObjectSpec(color, shape)), scene.background,
                    relation=RELATION_FOR[side])
        pads = dict(left=0, right=0, top=0, bottom=0)
        pads[side] = RES // fraction
        out.append(dict(scene=scene, side=side, pads=pads, color=color, shape=shape, caption=caption(spec, rng),
                        new_area=new_area(pads)))
    return out


def new_area(pads: dict, res: int = RES) -> Box:
    """Where the grown canvas is new, in fractions of the canvas."""
    H, W = res + pads["top"] + pads["bottom"], res + pads["left"] + pads["right"]
    x0, y0, x1, y1 = 0.0, 0.0, 1.0, 1.0
    if pads["left"]:
        x1 = pads["left"] / W
    if pads["right"]:
        x0 = (pads["left"] + res) / W
    if pads["top"]:
        y1 = pads["top"] / H
    if pads["bottom"]:
        y0 = (pads["top"] + res) / H
    return (x0, y0, x1, y1)


def upscale_cases(n: int, seed: int = 0) -> list[dict]:
    rng, out = _rng("upscale", seed), []
    while len(out) < n:
        scene = sample_scene(rng)
        if not STANDARD_HOLDOUT.contains(scene):
            out.append(dict(scene=scene, caption=caption(scene, rng)))
    return out


# ----------------------------------------------------------------------------------------------
# what a perfect edit would be (the criteria's own check, and the contact sheet's reference row)


def inpaint_ideal(case: dict) -> Tensor:
    """The edited scene rendered: equal to the input outside the box (only the changed object moved)."""
    return as_tensor(case["edited"])


def outpaint_ideal(case: dict, image: Tensor) -> Tensor:
    """The input on the grown canvas, with a small new object drawn in the middle of the new strip."""
    pads, side = case["pads"], case["side"]
    strip = pads[side]
    ref = as_tensor(Scene("single", (Obj(case["color"], case["shape"], "small", (0.5, 0.5)),),
                          case["scene"].background))
    lo, hi = (RES - strip) // 2, (RES - strip) // 2 + strip
    if side in ("left", "right"):
        part = ref[:, :, lo:hi]
        return torch.cat([part, image] if side == "left" else [image, part], dim=2)
    part = ref[:, lo:hi, :]
    return torch.cat([part, image] if side == "top" else [image, part], dim=1)


# ----------------------------------------------------------------------------------------------
# verdicts (images are (3, H, W) tensors in [-1, 1])


def _u8(x: Tensor) -> Tensor:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.int16)


def kept_error(out: Tensor, ref: Tensor, keep: Tensor) -> int:
    """The largest |out - ref| in 8-bit steps over the pixels where `keep` (H, W bool) holds."""
    d = (_u8(out) - _u8(ref)).abs().amax(0)   # (H, W)
    return int(d[keep].max()) if bool(keep.any()) else 0


def _centred_in(box: Box, comp) -> bool:
    return box[0] <= comp.center[0] <= box[2] and box[1] <= comp.center[1] <= box[3]


def inpaint_verdict(out: Tensor, image: Tensor, mask: Tensor, case: dict) -> dict:
    """Did the edit put the new object in the box, take the old one away and keep the rest?"""
    seg = Segmentation(out)
    box, old, new = case["box"], case["old"], case["new"]
    found = [c for c in seg.objects(new.color) if _centred_in(box, c)]
    shape = seg.shape_of(found[0]) if found else None
    # The old object is still there if a component of its colour in the box is left (a colour change),
    # or one in the box still reads as its shape (a shape change: the colour is the new one's too).
    left = [c for c in seg.objects(old.color) if _centred_in(box, c)
            and (case["change"] == "color" or seg.shape_of(c) == old.shape)]
    m = mask[0, 0] >= 0.5                                                        # (H, W)
    inner = F.max_pool2d((~m).float()[None, None], 7, stride=1, padding=3)[0, 0] == 0   # 3 px in from the edge
    band = m & ~inner
    diff = (_u8(out) - _u8(inpaint_ideal(case))).abs().float().mean(0)          # (H, W), vs a perfect edit
    err = kept_error(out, image, ~m)
    v = dict(new_found=bool(found), new_shape=shape, new_ok=shape == new.shape, old_gone=not left,
             kept_error=err, unchanged=err <= UNCHANGED_TOL,
             mask_error=round(float(diff[m].mean()), 2), band_error=round(float(diff[band].mean()), 2))
    v["success"] = v["new_ok"] and v["old_gone"] and v["unchanged"]
    return v


def outpaint_verdict(out: Tensor, image: Tensor, case: dict) -> dict:
    """Is the new object (colour, then shape) in the new area, and is the original where it was?"""
    pads = case["pads"]
    h, w = image.shape[-2:]
    expect = (h + pads["top"] + pads["bottom"], w + pads["left"] + pads["right"])
    if tuple(out.shape[-2:]) != expect:
        raise ValueError(f"the outpainted canvas is {tuple(out.shape[-2:])}, expected {expect}")
    seg = Segmentation(out)
    found = [c for c in seg.objects(case["color"]) if _centred_in(case["new_area"], c)]
    shape = seg.shape_of(found[0]) if found else None
    y, x = pads["top"], pads["left"]
    err = kept_error(out[:, y:y + h, x:x + w], image, torch.ones(h, w, dtype=torch.bool))
    # Whole = its box is near square, as every shape's is: the scorer reads some shapes squeezed into the
    # strip (a half disc, a flattened diamond) as the named one.
    whole = False
    if found:
        x0, y0, x1, y1 = found[0].bbox
        whole = min(x1 - x0, y1 - y0) >= 0.75 * max(x1 - x0, y1 - y0)
    v = dict(new_found=bool(found), new_shape=shape, new_ok=shape == case["shape"], whole=whole, kept_error=err,
             unchanged=err <= UNCHANGED_TOL)
    v["success"] = v["new_ok"] and v["unchanged"]
    return v


def drawn_anywhere(out: Tensor, color: str, shape: str) -> bool:
    """The largest component of `color` anywhere reads as `shape` (text-to-image, no mask to look in)."""
    seg = Segmentation(out)
    found = seg.objects(color)
    return bool(found) and seg.shape_of(found[0]) == shape


def all_right(verdicts: dict) -> bool:
    """A caption 'scores' on an image when every attribute it names is read right (None = not checked)."""
    return all(v is True for v in verdicts.values() if v is not None) and any(v is not None for v in verdicts.values())


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two (3, H, W) images in [-1, 1], on the [0, 1] scale."""
    mse = (((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def ssim(a: Tensor, b: Tensor) -> float:
    """Structural similarity (Wang et al. 2004, "Image quality assessment: from error visibility to
    structural similarity"): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
    per channel on the valid region, averaged. In float64: E[x^2] - E[x]^2 cancels badly in float32."""
    x, y = ((t.double().clamp(-1, 1)[:, None] + 1) / 2 for t in (a, b))   # (3, 1, H, W) in [0, 1]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5.0) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]                          # (1, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    var_x = F.conv2d(x * x, win) - mu_x ** 2
    var_y = F.conv2d(y * y, win) - mu_y ** 2
    cov = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(s.mean())
