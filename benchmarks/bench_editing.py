"""Editing quality on the bundled model: inpainting, img2img, outpainting and upscaling, on shapes-world
scenes whose ground truth the renderer knows (cases and success criteria: editing_cases.py).

    inpaint   mask one object of a two-object scene, prompt the scene with it changed; every blend of
              editing.inpaint is run on the same cases ("keep_known" = IF's, "repaint" with resample r)
    img2img   strength 0.3 with the scene's own caption; strength 0.8 with a restyled caption
    outpaint  grow the canvas by a quarter of the width on one side, the caption adding an object there
    upscale   64 px renders downsampled to 32 px, enlarged by the bundled SR stage vs bicubic: PSNR, SSIM

Everything goes through editing.py with the model's defaults (steps, guidance, strengths); batches of
BATCH cases, batch k seeded `seed + k`, so the numbers do not depend on the machine.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_editing.py            # ~8 min on 2 cores (load ~1)
    PYTHONPATH=src .venv/bin/python benchmarks/bench_editing.py --tried    # + ~7 min: the variants tried
    PYTHONPATH=src .venv/bin/python benchmarks/bench_editing.py --quick    # ~1 min, prints; writes only --json
    PYTHONPATH=src .venv/bin/python benchmarks/bench_editing.py --render   # README section from the JSON

One torch thread by default: on the shared 2-core machine a 2-thread run stalls whenever another
process holds a core (README, "Training throughput").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import editing_cases as ec  # noqa: E402
from machine import machine  # noqa: E402
from report_editing import contact_sheet, table, write_readme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 10
BLENDS = (("keep_known", 1), ("repaint", 1), ("repaint", 3))   # (blend, resample)
SIZES = {"full": dict(inpaint=20, img2img=30, outpaint=20, upscale=30),
         "quick": dict(inpaint=2, img2img=3, outpaint=4, upscale=2)}
SHOW = 4   # examples per task on the contact sheet


def blend_name(blend: str, resample: int) -> str:
    return blend if blend == "keep_known" else f"{blend} r={resample}"


def _chunks(cases: list, seed: int):
    for k in range(0, len(cases), BATCH):
        yield seed + k // BATCH, cases[k:k + BATCH]


def _stack(cases, key="scene") -> torch.Tensor:
    return torch.stack([ec.as_tensor(c[key]) for c in cases])


def _rate(items: list[dict], key: str) -> float | None:
    return sum(bool(v[key]) for v in items) / len(items) if items else None


def _mean(items: list[dict], key: str) -> float:
    return round(sum(v[key] for v in items) / len(items), 3)


# ----------------------------------------------------------------------------------------------
# the tasks


def run_inpaint(cascade, n: int, seed: int, shown: dict, blends=BLENDS) -> dict:
    from openimagen import editing

    cases = ec.inpaint_cases(n, seed)
    out = {"cases": [dict(caption=c["caption"], change=c["change"], box=[round(b, 4) for b in c["box"]])
                     for c in cases], "blends": {}}
    masks = torch.cat([ec.box_mask(c["box"], ec.RES, ec.RES) for c in cases[:SHOW]])
    shown["inpaint"] = {"input": _stack(cases[:SHOW]), "ideal": torch.stack([ec.inpaint_ideal(c) for c in cases[:SHOW]]),
                        "mask": masks.expand(-1, 3, -1, -1) * 2 - 1}
    for blend, r in blends:
        items, t0, images = [], time.perf_counter(), []
        for s, chunk in _chunks(cases, seed):
            image = _stack(chunk)
            mask = torch.cat([ec.box_mask(c["box"], ec.RES, ec.RES) for c in chunk])
            res = editing.inpaint(cascade, image, mask, [c["caption"] for c in chunk], blend=blend, resample=r,
                                  seed=s, progress=False)
            base_hw = tuple(res.images[0].shape[-2:])
            base_img, base_mask = editing.resize_image(image, base_hw), editing.resize_mask(mask, base_hw)
            for i, c in enumerate(chunk):
                v = ec.inpaint_verdict(res.images[-1][i], image[i], mask[i:i + 1], c)
                # The known region must be the input at every stage (item 5), not only at the end.
                v["base_kept_error"] = ec.kept_error(res.images[0][i], base_img[i], base_mask[i, 0] < 0.5)
                v["unchanged"] = v["unchanged"] and v["base_kept_error"] <= ec.UNCHANGED_TOL
                v["success"] = v["success"] and v["unchanged"]
                items.append(v)
            images.append(res.images[-1])
        seconds = time.perf_counter() - t0
        name = blend_name(blend, r)
        shown["inpaint"][name] = torch.cat(images)[:SHOW]
        shown["inpaint"][name + " ok"] = [v["success"] for v in items[:SHOW]]
        out["blends"][name] = dict(
            blend=blend, resample=r, success=_rate(items, "success"), new_ok=_rate(items, "new_ok"),
            old_gone=_rate(items, "old_gone"), unchanged=_rate(items, "unchanged"),
            success_color_change=_rate([v for v, c in zip(items, cases) if c["change"] == "color"], "success"),
            success_shape_change=_rate([v for v, c in zip(items, cases) if c["change"] == "shape"], "success"),
            max_kept_error=max(max(v["kept_error"], v["base_kept_error"]) for v in items),
            mask_error=_mean(items, "mask_error"), band_error=_mean(items, "band_error"),
            seconds=round(seconds, 1), seconds_per_image=round(seconds / n, 2), items=items)
        print(f"inpaint {name}: success {out['blends'][name]['success']:.0%} ({seconds:.0f} s)", flush=True)
    return out


def run_inpaint_reference(cascade, n: int, seed: int) -> dict:
    """--tried: the edited captions drawn from scratch (text-to-image); is the new object drawn right
    anywhere? The model's own rate for these objects, without a mask."""
    cases, items, t0 = ec.inpaint_cases(n, seed), [], time.perf_counter()
    for s, chunk in _chunks(cases, seed):
        images = cascade.generate([c["caption"] for c in chunk], seed=s, progress=False).images[-1]
        items += [ec.drawn_anywhere(x, c["new"].color, c["new"].shape) for x, c in zip(images, chunk)]
    seconds = time.perf_counter() - t0
    print(f"inpaint reference, text-to-image: new object drawn right {sum(items) / n:.0%} ({seconds:.0f} s)",
          flush=True)
    return dict(new_ok=sum(items) / n, seconds=round(seconds, 1), items=items)


IMG2IMG = ((0.3, "caption"), (0.8, "new_caption"))                        # the two measurements
IMG2IMG_TRIED = ((0.1, "caption"), (0.2, "caption"), (1.0, "new_caption"))  # --tried: a strength sweep


def run_img2img(cascade, n: int, seed: int, shown: dict, words: bool, settings=IMG2IMG) -> dict:
    from openimagen import editing
    from openimagen.evaluate.scorer import score_many

    cases = ec.img2img_cases(n, seed, words=words)
    out = {}
    shown.setdefault("img2img", {"input": _stack(cases[:SHOW]), "new ideal": _stack(cases[:SHOW], "new_scene")})
    for strength, key in settings:
        t0, images = time.perf_counter(), []
        for s, chunk in _chunks(cases, seed):
            res = editing.img2img(cascade, _stack(chunk), [c[key] for c in chunk], strength=strength, seed=s,
                                  progress=False)
            images.append(res.images[-1])
        seconds = time.perf_counter() - t0
        images = torch.cat(images)
        report = score_many(images, [c[key] for c in cases])
        ok = [ec.all_right(it["scores"]) for it in report.items]
        truth = score_many(_stack(cases, "scene" if key == "caption" else "new_scene"), [c[key] for c in cases])
        name = f"strength {strength}, {'own' if key == 'caption' else 'new'} caption"
        if settings is IMG2IMG:
            shown["img2img"][name] = images[:SHOW]
            shown["img2img"][name + " ok"] = ok[:SHOW]
        out[name] = dict(strength=strength, caption=key, score=sum(ok) / len(ok), accuracy=report.accuracy,
                         scorer_on_renders=sum(ec.all_right(it["scores"]) for it in truth.items) / len(ok),
                         kinds={k: sum(c["scene"].kind == k for c in cases)
                                for k in ("single", "relation", "count", "word")},
                         words_checked=words, seconds=round(seconds, 1),
                         items=[dict(caption=it["caption"], scores=it["scores"], ok=o)
                                for it, o in zip(report.items, ok)])
        print(f"img2img {name}: {out[name]['score']:.0%} ({seconds:.0f} s)", flush=True)
    return out


def run_outpaint(cascade, n: int, seed: int, shown: dict, fraction: int = ec.OUTPAINT_FRACTION,
                 blend: str | None = None) -> dict:
    from openimagen import editing

    cases = ec.outpaint_cases(n, seed, fraction=fraction)
    t0, items, outputs = time.perf_counter(), [None] * n, [None] * n
    for side in ec.RELATION_FOR:   # one canvas size per call: batch the cases of each side
        idx = [i for i, c in enumerate(cases) if c["side"] == side]
        for s, chunk in _chunks(idx, seed + 100 * list(ec.RELATION_FOR).index(side)):
            image = torch.stack([ec.as_tensor(cases[i]["scene"]) for i in chunk])
            res = editing.outpaint(cascade, image, [cases[i]["caption"] for i in chunk], **cases[chunk[0]]["pads"],
                                   blend=blend, seed=s, progress=False)
            for j, i in enumerate(chunk):
                items[i] = ec.outpaint_verdict(res.images[-1][j], image[j], cases[i])
                outputs[i] = res.images[-1][j]
    seconds = time.perf_counter() - t0
    if fraction == ec.OUTPAINT_FRACTION and blend is None:
        shown["outpaint"] = {"input": [ec.as_tensor(c["scene"]) for c in cases[:SHOW]],
                             "ideal": [ec.outpaint_ideal(c, ec.as_tensor(c["scene"])) for c in cases[:SHOW]],
                             "output": outputs[:SHOW], "output ok": [v["success"] for v in items[:SHOW]]}
    r = dict(success=_rate(items, "success"), new_found=_rate(items, "new_found"), new_ok=_rate(items, "new_ok"),
             unchanged=_rate(items, "unchanged"), success_whole=sum(v["success"] and v["whole"] for v in items) / n,
             max_kept_error=max(v["kept_error"] for v in items),
             extension=f"{ec.RES // fraction} px on a {ec.RES} px side",
             blend=blend or "the model's default", seconds=round(seconds, 1),
             items=[dict(caption=c["caption"], side=c["side"], **v) for c, v in zip(cases, items)])
    print(f"outpaint {r['extension']}, {r['blend']}: success {r['success']:.0%}, new colour there {r['new_found']:.0%} "
          f"({seconds:.0f} s)", flush=True)
    return r


def run_upscale(cascade, n: int, seed: int, shown: dict, noise_level=None, **kw) -> dict:
    """kw: more of editing.upscale's options (strength, sampler, steps), recorded in the result."""
    from openimagen import editing

    cases = ec.upscale_cases(n, seed)
    t0, rows = time.perf_counter(), []
    sheet = {k: [] for k in ("32 px", "bicubic", "SR stage", "ground truth")}
    for s, chunk in _chunks(cases, seed):
        truth = _stack(chunk)
        low = editing.resize_image(truth, (ec.RES // 2, ec.RES // 2))   # antialiased, as training made them
        sr = editing.upscale(cascade, low, [c["caption"] for c in chunk], seed=s, noise_level=noise_level,
                             progress=False, **kw).images[-1]
        bicubic = F.interpolate(low, size=(ec.RES, ec.RES), mode="bicubic", align_corners=False).clamp(-1, 1)
        for i, c in enumerate(chunk):
            rows.append(dict(caption=c["caption"], psnr_sr=ec.psnr(sr[i], truth[i]),
                             psnr_bicubic=ec.psnr(bicubic[i], truth[i]), ssim_sr=ec.ssim(sr[i], truth[i]),
                             ssim_bicubic=ec.ssim(bicubic[i], truth[i])))
        for k, x in zip(sheet, (F.interpolate(low, scale_factor=2, mode="nearest"), bicubic, sr, truth)):
            sheet[k].append(x)
    seconds = time.perf_counter() - t0
    if noise_level is None and not kw:
        shown["upscale"] = {k: torch.cat(v)[:SHOW] for k, v in sheet.items()}
    r = {k: _mean(rows, k) for k in ("psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic")}
    r.update(gain_db=round(r["psnr_sr"] - r["psnr_bicubic"], 3),
             sr_better=sum(x["psnr_sr"] > x["psnr_bicubic"] for x in rows) / len(rows),
             noise_level="the SR stage's default" if noise_level is None else noise_level, options=kw,
             seconds=round(seconds, 1), items=rows)
    print(f"upscale (noise level: {r['noise_level']}): PSNR SR {r['psnr_sr']:.2f} dB vs bicubic "
          f"{r['psnr_bicubic']:.2f} dB ({seconds:.0f} s)", flush=True)
    return r


# ----------------------------------------------------------------------------------------------


def _sizes(quick: bool, spec: str) -> dict:
    sizes = dict(SIZES["quick" if quick else "full"])
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition("=")
        if k not in sizes or not v.isdigit() or int(v) < 1:
            raise SystemExit(f"--n {part!r}: give task=N with a task among {list(sizes)} and N >= 1")
        sizes[k] = int(v)
    return sizes


def _blends(spec: str) -> tuple:
    out = []
    for part in spec.split(","):
        name, _, r = part.partition(":")
        if name not in ("keep_known", "repaint") or (r and not r.isdigit()):
            raise SystemExit(f"--blends {part!r}: give keep_known or repaint:R (R = resample count)")
        out.append((name, int(r or 1)))
    return tuple(out)


def _up_to(cascade, res: int):
    """The cascade's stages up to `res` px: the cases are drawn and judged at ec.RES, and no stage's output
    depends on the stages after it, so this is the full cascade's image at that size, without the cost of the rest."""
    from openimagen.cascade import Cascade

    stages = [s for s in cascade.stages if s.resolution <= res]
    if not stages or stages[-1].resolution != res:
        raise SystemExit(f"the bundled cascade has no stage at {res} px (its stages: "
                         f"{[s.resolution for s in cascade.stages]}); editing_cases.RES must be one of them")
    return Cascade(cascade.text_encoder, stages, prompt_expansion=cascade.prompt_expansion)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few cases per task; prints, writes only --json")
    p.add_argument("--tried", action="store_true", help="also the variants tried where a floor was missed "
                   "(img2img strengths 0.1 / 0.2 / 1.0, outpainting with keep_known and half the width, upscaling at "
                   "noise level 0 and from the bicubic enlargement, "
                   "the edited captions drawn from scratch): ~7 more minutes")
    p.add_argument("--only", default="inpaint,img2img,outpaint,upscale", help="comma-separated tasks")
    p.add_argument("--n", default="", help="cases per task, e.g. inpaint=60 (defaults: %s)" % SIZES["full"])
    p.add_argument("--blends", default=",".join(f"{b}:{r}" for b, r in BLENDS), help="inpainting blends")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/editing.json; "
                                                 "none with --quick)")
    p.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"), help="'' to skip")
    p.add_argument("--render", action="store_true", help="only rewrite the README section from the JSON")
    args = p.parse_args()
    path = Path(args.json or ROOT / "benchmarks" / "results" / "editing.json")
    if args.render:
        write_readme(Path(args.readme), json.loads(path.read_text()))
        return

    from openimagen import editing
    from openimagen.evaluate.ocr import tesseract_available
    from openimagen.load import load_model

    torch.set_num_threads(args.threads)
    sizes, tasks, blends = _sizes(args.quick, args.n), args.only.split(","), _blends(args.blends)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    cascade, shown, res, tried = _up_to(load_model(None), ec.RES), {}, {}, {}
    words = tesseract_available()
    if "inpaint" in tasks:
        res["inpaint"] = run_inpaint(cascade, sizes["inpaint"], args.seed, shown, blends)
    if "img2img" in tasks:
        res["img2img"] = run_img2img(cascade, sizes["img2img"], args.seed, shown, words)
    if "outpaint" in tasks:
        res["outpaint"] = run_outpaint(cascade, sizes["outpaint"], args.seed, shown)
    if "upscale" in tasks:
        res["upscale"] = run_upscale(cascade, sizes["upscale"], args.seed, shown)
    main_seconds = time.perf_counter() - t0
    if args.tried:
        if "inpaint" in tasks:
            tried["inpaint, the edited captions drawn from scratch"] = run_inpaint_reference(
                cascade, sizes["inpaint"], args.seed)
        if "img2img" in tasks:
            for name, r in run_img2img(cascade, sizes["img2img"], args.seed, shown, words, IMG2IMG_TRIED).items():
                tried[f"img2img, {name}"] = r
        if "outpaint" in tasks:
            tried["outpaint, keep_known (IF's blend)"] = run_outpaint(cascade, sizes["outpaint"], args.seed, shown,
                                                                      blend="keep_known")
            tried["outpaint, half the width"] = run_outpaint(cascade, sizes["outpaint"], args.seed, shown, fraction=2)
        if "upscale" in tasks:
            tried["upscale, noise level 0"] = run_upscale(cascade, sizes["upscale"], args.seed, shown, noise_level=0.0)
            # img2img-SR: refine the bicubic enlargement instead of drawing from noise; strength, sampler and
            # noise level chosen on other cases (upscale_cases seed 1: +1.97 dB there; dpmpp_2m: +1.82)
            tried["upscale, from the bicubic enlargement (strength 0.16, DDIM, noise level 0)"] = run_upscale(
                cascade, sizes["upscale"], args.seed, shown, noise_level=0.0, strength=0.16, sampler="ddim")
    result = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        machine={**machine(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        settings=dict(quick=args.quick, only=tasks, tried=args.tried, seed=args.seed, threads=args.threads,
                      batch=BATCH, sizes=sizes,
                      resolution=ec.RES, mask_pad=ec.PAD, unchanged_tol=ec.UNCHANGED_TOL,
                      blends=[blend_name(*b) for b in blends], default_blend=blend_name(editing.OUR_BLEND, 1),
                      model="bundled (defaults of editing.py)"),
        seconds=round(main_seconds, 1), seconds_tried=round(time.perf_counter() - t0 - main_seconds, 1),
        tasks=res, tried=tried)
    print(table(result))
    if args.quick and not args.json:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    contact_sheet(shown).save(path.with_name(path.stem + "_sheet.png"))
    if args.readme and not args.quick:
        write_readme(Path(args.readme), result)


if __name__ == "__main__":
    main()
