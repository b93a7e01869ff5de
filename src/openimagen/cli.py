"""`openimagen` command line: parse, build a config, call the library. Nothing else lives here."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

# OpenMP worker threads that spin while they wait make every sampling step 10-20x slower as soon as another
# process holds a core, which is the common case on a laptop or a shared machine; sleeping instead costs ~10%
# on an idle machine (docs/decisions.md#omp-passive). Set before torch loads its OpenMP runtime; a user's own
# OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_MODEL_HELP = "the small shapes-world cascade shipped inside the package"
SAMPLER_NAMES = ["ddpm", "ddim", "dpmpp_2m", "dpmpp_3m"]  # diffusion.SAMPLERS (tests check they agree; importing it costs torch)


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


# ----------------------------------------------------------------------------------------------
# generate


def cmd_generate(args) -> int:
    from . import api

    if args.from_png is not None:
        if args.no_expand:
            raise ValueError("--from-png reproduces the stored request, prompt expansion included; give no --no-expand with it")
        return _run(_from_png(args), args)
    _check_prompts(args.prompt, 'openimagen generate "a red circle above a blue square"')
    request = api.GenerateRequest(prompt=args.prompt, height=args.height, width=args.width,
                                  expand=False if args.no_expand else None, **_sampling(args))
    return _run(request, args)


def _sampling(args) -> dict:
    """The request fields every command shares (generate, edit, upscale)."""
    return dict(negative_prompt=args.negative_prompt, seed=args.seed, num_images=args.num_images, steps=args.steps,
                guidance=args.guidance, sampler=args.sampler, noise_level=args.noise_level,
                model=_model_name(args.model), sr=_sr_names(args.sr), precision=args.precision,
                lora=tuple(_lora_name(x) for x in args.lora or ()))


def _check_prompts(prompts: list[str], example: str) -> None:
    if not prompts:
        raise ValueError(f"no prompt: describe the image, e.g. {example}")
    for p in prompts:
        if not p.strip():
            raise ValueError(f"empty prompt: describe the image, e.g. {example}")


def _from_png(args, image: str | None = None):
    """The request a PNG stores (a generation or an edit: the PNG knows which), with --model applied."""
    from . import api

    request = api.request_from_png(args.from_png)
    if args.prompt:
        raise ValueError("--from-png reproduces the stored prompt; give no prompt with it")
    if args.model is not None:  # the same parameters on another copy of the model
        request = dataclasses.replace(request, model=args.model, sr=_sr_names(args.sr))
    if image is not None:  # the same input file in another place: its sha256 must still match
        if not isinstance(request, api.EditRequest):
            raise ValueError(f"{args.from_png} was made from text alone; give no image with --from-png")
        request = dataclasses.replace(request, image=image)
    return request


def _run(request, args) -> int:
    from . import api

    from .io.disk import check_output_folder

    check_output_folder(args.out)  # before the work, not after the images are drawn
    run = api.run_edit if isinstance(request, api.EditRequest) else api.run
    # With --offload every model waits on the CPU and visits the device only while it runs.
    result = run(request, device=args.device, offload=args.offload, progress=not args.quiet)
    for p in api.write_pngs(result, args.out):
        print(p)
    return 0


def _sr_names(names: list[str] | None) -> str | list[str] | None:
    """--sr given once: that name; several times (IF-II, then the x4 upscaler): the list, in order."""
    if not names:
        return None
    names = [_model_name(n) for n in names]
    return names[0] if len(names) == 1 else names


def _lora_name(item: str) -> str:
    from .lora import parse_lora_arg

    path, scale = parse_lora_arg(item)
    return f"{_model_name(path)}:{scale:g}"


def _model_name(name: str | None) -> str | None:
    """A local folder as an absolute path (so --from-png works from any directory); hub ids as typed."""
    if name is not None and Path(name).exists():
        return str(Path(name).resolve())
    return name


# ----------------------------------------------------------------------------------------------
# edit / upscale: a user's image


def cmd_edit(args) -> int:
    from . import api

    if args.from_png is not None:
        return _run(_from_png(args, image=args.image), args)
    if args.image is None or not args.prompt:
        raise ValueError('give an image and a prompt, e.g. openimagen edit photo.png "a red circle" --strength 0.6')
    _check_prompts(args.prompt, 'openimagen edit photo.png "a red circle" --strength 0.6')
    if args.mask is not None and args.extend is not None:
        raise ValueError("outpainting masks the new border itself; give --mask (inpaint) or --extend (outpaint), not both")
    mode = "inpaint" if args.mask is not None else "outpaint" if args.extend is not None else "img2img"
    request = api.EditRequest(mode=mode, image=args.image, prompt=args.prompt, mask=args.mask, strength=args.strength,
                              extend=args.extend, fill=args.fill, fit=args.fit, blend=args.blend,
                              resample=args.resample, **_sampling(args))
    return _run(request, args)


def cmd_upscale(args) -> int:
    from . import api

    if args.from_png is not None:
        return _run(_from_png(args, image=args.image), args)
    if args.image is None or not args.prompt:
        raise ValueError('give an image and a prompt, e.g. openimagen upscale small.png "a red circle"')
    _check_prompts(args.prompt, 'openimagen upscale small.png "a red circle"')
    request = api.EditRequest(mode="upscale", image=args.image, prompt=args.prompt, mask=args.mask,
                              original=args.original, strength=args.strength, from_stage=args.from_stage,
                              blend=args.blend, resample=args.resample, **_sampling(args))
    return _run(request, args)


def _strength_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"--strength must be a number in (0, 1] (0.3 keeps the layout, 1 redraws "
                                         f"everything), got {s!r}")
    return v


def _extend_arg(s: str) -> dict:
    """--extend left=32,right=32 | width=96,height=64 | aspect=16:9 -> a dict (api.check_extend checks the rest)."""
    from .edit_request import SIDES, TARGETS

    out = {}
    for part in filter(None, (p.strip() for p in s.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in SIDES + TARGETS:
            raise argparse.ArgumentTypeError(
                f"--extend {s!r}: write SIDE=PIXELS with sides {', '.join(SIDES)} (e.g. left=32,right=32), "
                "or a target canvas width=W,height=H or aspect=W:H")
        if key == "aspect":
            out[key] = value.strip()
        elif value.strip().isdigit():
            out[key] = int(value)
        else:
            raise argparse.ArgumentTypeError(f"--extend {key}={value}: give a whole number of pixels, e.g. {key}=32")
    return out


EDIT_EXAMPLES = """\
The mode follows from the options: img2img (no mask), inpaint (--mask), outpaint (--extend).
A mask has the image's size: white (50% grey or brighter) = repaint, black = keep.
Images are resized to each stage's size (short side = the stage's resolution, aspect kept, as DeepFloyd IF does).

examples:
  openimagen edit shapes.png "a red circle above a blue square" --strength 0.6
  openimagen edit shapes.png "a green star above a blue square" --mask top-half.png
  openimagen edit shapes.png "a red circle and a yellow triangle" --extend right=32
  openimagen edit shapes.png "two blue squares" --extend aspect=2:1 --seed 3
  openimagen edit photo.jpg "a photo of a cat" --model DeepFloyd/IF-I-XL-v1.0 --sr DeepFloyd/IF-II-L-v1.0
  openimagen edit --from-png out/00-a-red-circle-above-a-blue-square-stage1-64px.png --out again/
"""
UPSCALE_EXAMPLES = """\
The image is enlarged by the cascade's super-resolution stages, from --from-stage (default 1) to the last.

examples:
  openimagen upscale small.png "a red circle above a blue square"
  openimagen upscale small.png "a red circle above a blue square" --original big.png --strength 0.8
  openimagen upscale photo64.png "a photo of a cat" --model DeepFloyd/IF-I-XL-v1.0 --sr DeepFloyd/IF-II-L-v1.0
  openimagen upscale --from-png out/00-a-red-circle-above-a-blue-square-stage1-64px.png --out again/
"""


# ----------------------------------------------------------------------------------------------
# train / embed / evaluate


def cmd_train(args) -> int:
    from .train import load_train_config, train
    from .train.finetune import finetune_config
    from .finetune_cli import init_from_args, train_stages_from_args

    init = init_from_args(args)
    if init is not None:
        cfg = finetune_config(init, args.preset, args.config, args.set or [])
    else:
        cfg = load_train_config(args.preset, args.config, args.set or [])
        if args.train_stages:  # a share of a fresh cascade; `openimagen merge-stages` joins the shares
            cfg = dataclasses.replace(cfg, train_stages=train_stages_from_args(args))
    model_dir = train(cfg, args.out, resume=args.resume, max_steps=args.max_steps,
                      data_path=args.data, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # once, not once per process of a multi-process run
        print(f"model written to {model_dir}")
        if cfg.train_stages is not None:
            print(f"this run trained stage(s) {list(cfg.train_stages)} of the cascade; once the runs of the other "
                  f"stages are done: openimagen merge-stages {args.out} OTHER_RUN... --out MODEL_FOLDER")
        else:
            print(f'try it: openimagen generate --model {args.out} "a red circle above a blue square"')
    return 0


def cmd_merge_stages(args) -> int:
    from .train.merge import merge_stages

    out = merge_stages(args.runs, args.out)
    print(f"model written to {out}")
    print(f'try it: openimagen generate --model {out} "a red circle above a blue square"')
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
                            sampler=args.sampler, seed=args.seed, progress=not args.quiet,
                            expand=False if args.no_expand else None)
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


def _add_blend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blend", default=None,
                   help="with a mask: keep_known (default; IF's: the kept area is the input after every step) or "
                        "repaint (RePaint: the kept area re-noised to each step's level)")
    p.add_argument("--resample", type=_positive_int("--resample"), default=None,
                   help="with --blend repaint: redo every step N times (RePaint's resampling; slower, fewer seams)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    """What generate, edit and upscale share: the model, the sampling, the output."""
    p.add_argument("--from-png", default=None, metavar="FILE",
                   help="run again with the parameters stored in a PNG that openimagen wrote (same image, bit for bit; "
                        "an edit's input files must be unchanged)")
    p.add_argument("--model", default=None, help=f"a model folder, or a DeepFloyd IF hub id / folder (default: {DEFAULT_MODEL_HELP})")
    p.add_argument("--sr", action="append", default=None,
                   help="a DeepFloyd IF stage II hub id or folder to run after --model; give it again for stage III, "
                        "the SD x4 upscaler (stabilityai/stable-diffusion-x4-upscaler): 64, 256, 1024 px")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a LoRA adapter (folder or .safetensors; a LoRA run folder) on the model; repeat for several")
    p.add_argument("--steps", type=_steps_arg, default=None,
                   help="sampling steps per stage, or an IF timestep list such as smart50 (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="sampler (default: the model's)")
    p.add_argument("--negative-prompt", default=None, help="what the image should not show")
    p.add_argument("--noise-level", type=float, default=None,
                   help="noise augmentation of the low-res image in super-resolution stages, in the stage's own "
                        "units (IF: 0-999, default 250; 0 for IF's inpainting super-resolution)")
    p.add_argument("--offload", action="store_true",
                   help="keep models on the CPU; move each to --device only while it runs (the IF cascade in 16 GB)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    p.add_argument("--num-images", type=_positive_int("--num-images"), default=1, help="images per prompt")
    p.add_argument("--out", default="openimagen-out", help="output folder for the PNGs (default: openimagen-out)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default cpu)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="weights dtype (default auto: bf16 where the device computes it natively, else fp32; "
                        "fp16 on CUDA without bf16)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="openimagen", description="Cascaded text-to-image diffusion (Imagen, DeepFloyd IF).")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=_positive_int("--threads"), default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest for small models on a busy machine)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate images from a prompt with every stage of a cascade")
    g.add_argument("prompt", nargs="*", help="one or more prompts")
    g.add_argument("--height", type=_positive_int("--height"), default=None, help="output height of the last stage")
    g.add_argument("--width", type=_positive_int("--width"), default=None, help="output width of the last stage")
    g.add_argument("--no-expand", action="store_true",
                   help="give the model the prompt as typed; by default a shapes-world model (the bundled one) reads "
                        "it rewritten as one of its training captions, attributes left out drawn by the seed")
    _add_sampling_options(g)
    g.set_defaults(func=cmd_generate)

    how = argparse.RawDescriptionHelpFormatter
    ed = sub.add_parser("edit", help="redraw (img2img), repaint (--mask) or extend (--extend) an image",
                        epilog=EDIT_EXAMPLES, formatter_class=how)
    ed.add_argument("image", nargs="?", help="the image file to edit (with --from-png: a copy of the stored input)")
    ed.add_argument("prompt", nargs="*", help="what the edited image shows (one or more prompts)")
    ed.add_argument("--strength", type=_strength_arg, default=None,
                    help="how far the image is noised before redrawing, in (0, 1] (default 0.7 for img2img, 1.0 "
                         "for inpaint, as DeepFloyd IF)")
    ed.add_argument("--mask", default=None, metavar="MASK", help="inpaint: white = repaint, black = keep")
    ed.add_argument("--extend", type=_extend_arg, default=None, metavar="SPEC",
                    help="outpaint: left=32,right=32 (pixels per side) or width=W,height=H or aspect=16:9 (centred)")
    ed.add_argument("--fill", default=None, help="outpaint: what the new area starts as: edge (default), reflect, gray")
    ed.add_argument("--fit", default=None, help="outpaint: a canvas the U-Nets cannot take is grown and cropped "
                                                "back (round, the default) or refused naming valid sizes (refuse)")
    _add_blend_options(ed)
    _add_sampling_options(ed)
    ed.set_defaults(func=cmd_edit)

    up = sub.add_parser("upscale", help="enlarge an image with a cascade's super-resolution stages",
                        epilog=UPSCALE_EXAMPLES, formatter_class=how)
    up.add_argument("image", nargs="?", help="the image file to enlarge (with --from-png: a copy of the stored input)")
    up.add_argument("prompt", nargs="*", help="what the image shows (one or more prompts)")
    up.add_argument("--from-stage", type=_positive_int("--from-stage"), default=None,
                    help="the first stage to run on the image (default 1: the first super-resolution stage)")
    up.add_argument("--original", default=None, metavar="FILE",
                    help="a full-size image to start from (IF img2img-SR / inpainting-SR); with --strength")
    up.add_argument("--strength", type=_strength_arg, default=None,
                    help="with --original: how far it is noised, in (0, 1] (default: IF's, 0.8)")
    up.add_argument("--mask", default=None, metavar="MASK",
                    help="repaint only the white area while enlarging (inpainting-SR); the size of --original")
    _add_blend_options(up)
    _add_sampling_options(up)
    up.set_defaults(func=cmd_upscale)

    t = sub.add_parser("train", help="train every stage of a cascade in one run")
    _add_run_options(t, "run folder: checkpoints, samples, logs and the final model")
    t.add_argument("--max-steps", type=_positive_int("--max-steps"), default=None, help="stop after this many steps per stage")
    t.add_argument("--resume", action="store_true", help="continue exactly where the run in --out stopped")
    from .finetune_cli import add_init_options

    add_init_options(t)
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("merge-stages", help="join a cascade trained as several --train-stages runs into one model")
    m.add_argument("runs", nargs="+", metavar="RUN", help="the run folders, each trained with --train-stages")
    m.add_argument("--out", required=True, help="the model folder to write (what generate --model takes)")
    m.set_defaults(func=cmd_merge_stages)

    e = sub.add_parser("embed", help="encode every caption of the training data once (before `train`)")
    _add_run_options(e, "the run folder that `train --out` will use; embeddings go to OUT/embeddings")
    e.set_defaults(func=cmd_embed)

    v = sub.add_parser("evaluate", help="score prompt fidelity of a model on shapes-world prompts")
    v.add_argument("--model", default=None, help=f"model folder (default: {DEFAULT_MODEL_HELP})")
    v.add_argument("--prompts", default=None, help="text file, one shapes-world caption per line, or a shipped benchmark: "
                   "'templates' (the default) or 'natural'")
    v.add_argument("--out", required=True, help="folder for images and scores.json")
    v.add_argument("--steps", type=_positive_int("--steps"), default=None)
    v.add_argument("--guidance", type=float, default=None)
    v.add_argument("--sampler", choices=SAMPLER_NAMES, default=None)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-expand", action="store_true", help="score the model on the prompts as written, without "
                   "prompt expansion (the network alone)")
    v.set_defaults(func=cmd_evaluate)

    from .serve.cli import add_parser as add_serve  # serve/cli.py: the command's code lives with the server

    add_serve(sub, _positive_int, _model_name)
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
