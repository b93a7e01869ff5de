"""`openimagen` command line: parse, build a config, call the library. Nothing else lives here."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

DEFAULT_MODEL_HELP = "the small shapes-world cascade shipped inside the package"


def _positive_int(name):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {v}")
        return v

    return parse


def _steps_arg(s: str) -> int | str:
    """--steps: a whole number, or a named DeepFloyd IF timestep list such as smart50 or fast27."""
    if s.isdigit():
        return _positive_int("--steps")(s)
    from .diffusion import IF_RESPACINGS

    if s not in IF_RESPACINGS:
        raise argparse.ArgumentTypeError(f"--steps must be a whole number or one of {sorted(IF_RESPACINGS)}, got {s!r}")
    return s


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


# ----------------------------------------------------------------------------------------------
# generate


def cmd_generate(args) -> int:
    import torch

    from .data.transforms import to_pil
    from .loading import load_model

    for p in args.prompt:
        if not p.strip():
            raise ValueError("empty prompt: describe the image, e.g. openimagen generate \"a red circle above a blue square\"")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    # With --offload every model waits on the CPU and visits the device only while it runs.
    model = load_model(args.model, sr=args.sr, device="cpu" if args.offload else args.device, dtype=dtype)
    out = model.generate(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_images=args.num_images,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        lowres_aug=args.noise_level,
        height=args.height,
        width=args.width,
        seed=args.seed,
        device=args.device,
        offload=args.offload,
        progress=not args.quiet,
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, images in enumerate(out.images):
        h, w = images.shape[-2:]
        res = f"{w}" if h == w else f"{w}x{h}"
        for i, (img, prompt) in enumerate(zip(to_pil(images), out.prompts)):
            path = out_dir / f"{i:02d}-{_slug(prompt)}-stage{k}-{res}px.png"
            img.save(path)
            written.append(path)
    for p in written:
        print(p)
    return 0


# ----------------------------------------------------------------------------------------------
# train / embed / evaluate


def cmd_train(args) -> int:
    from .train import load_train_config, train

    cfg = load_train_config(args.preset, args.config, args.set or [])
    model_dir = train(cfg, args.out, resume=args.resume, max_steps=args.max_steps,
                      data_path=args.data, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # once, not once per process of a multi-process run
        print(f"model written to {model_dir}")
        print(f'try it: openimagen generate --model {args.out} "a red circle above a blue square"')
    return 0


def cmd_embed(args) -> int:
    from .train import embed_dataset, load_train_config

    cfg = load_train_config(args.preset, args.config, args.set or [])
    folder = embed_dataset(cfg, args.out, data_path=args.data, progress=not args.quiet)
    print(f"embeddings written to {folder}; `openimagen train --out {args.out} ...` with the same "
          "preset/config will use them")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate.run import evaluate_model

    report = evaluate_model(args.model, args.prompts, args.out, steps=args.steps, guidance=args.guidance,
                            sampler=args.sampler, seed=args.seed, progress=not args.quiet)
    print(report)
    return 0


# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line naming the problem and where to look, instead of the usage block.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """What `train` and `embed` share: the same config decides the data and the text encoder."""
    p.add_argument("--preset", default=None, help="a training preset, e.g. shapes-tiny, shapes-small")
    p.add_argument("--config", default=None, help="a TOML or YAML training config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set optim.lr=1e-4")
    p.add_argument("--data", default=None, help="an image-caption folder or webdataset shards (default: shapes world)")
    p.add_argument("--out", required=True, help=out_help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="openimagen", description="Cascaded text-to-image diffusion (Imagen, DeepFloyd IF).")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=_positive_int("--threads"), default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest for small models on a busy machine)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate images from a prompt with every stage of a cascade")
    g.add_argument("prompt", nargs="+", help="one or more prompts")
    g.add_argument("--model", default=None, help=f"a model folder, or a DeepFloyd IF hub id / folder (default: {DEFAULT_MODEL_HELP})")
    g.add_argument("--sr", default=None, help="a DeepFloyd IF stage II hub id or folder to run after --model")
    g.add_argument("--steps", type=_steps_arg, default=None,
                   help="sampling steps per stage, or an IF timestep list such as smart50 (default: the model's)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    g.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp_2m"], default=None, help="sampler (default: the model's)")
    g.add_argument("--negative-prompt", default=None, help="what the image should not show")
    g.add_argument("--height", type=_positive_int("--height"), default=None, help="output height of the last stage")
    g.add_argument("--width", type=_positive_int("--width"), default=None, help="output width of the last stage")
    g.add_argument("--noise-level", type=float, default=None,
                   help="noise augmentation of the low-res image in super-resolution stages, in the stage's own "
                        "units (IF: 0-999, default 250)")
    g.add_argument("--offload", action="store_true",
                   help="keep models on the CPU; move each to --device only while it runs (the IF cascade in 16 GB)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    g.add_argument("--num-images", type=_positive_int("--num-images"), default=1, help="images per prompt")
    g.add_argument("--out", default="openimagen-out", help="output folder for the PNGs (default: openimagen-out)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default cpu)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights dtype (default fp32)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train every stage of a cascade in one run")
    _add_run_options(t, "run folder: checkpoints, samples, logs and the final model")
    t.add_argument("--max-steps", type=_positive_int("--max-steps"), default=None, help="stop after this many steps per stage")
    t.add_argument("--resume", action="store_true", help="continue exactly where the run in --out stopped")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("embed", help="encode every caption of the training data once (before `train`)")
    _add_run_options(e, "the run folder that `train --out` will use; embeddings go to OUT/embeddings")
    e.set_defaults(func=cmd_embed)

    v = sub.add_parser("evaluate", help="score prompt fidelity of a model on shapes-world prompts")
    v.add_argument("--model", default=None, help=f"model folder (default: {DEFAULT_MODEL_HELP})")
    v.add_argument("--prompts", default=None, help="text file, one shapes-world caption per line (default: the shipped benchmark)")
    v.add_argument("--out", required=True, help="folder for images and scores.json")
    v.add_argument("--steps", type=_positive_int("--steps"), default=None)
    v.add_argument("--guidance", type=float, default=None)
    v.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp_2m"], default=None)
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from .config import ConfigError

    try:
        return args.func(args)
    except (ValueError, ConfigError, FileNotFoundError, OSError, ImportError) as e:
        print(f"openimagen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
