"""`openimagen train --init MODEL ...`: the fine-tuning options of the CLI, turned into an InitConfig."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_init_options(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("fine-tuning (start from a trained model)")
    f.add_argument("--init", default=None, metavar="MODEL",
                   help="start from MODEL: 'bundled', a model folder, a run folder, or an IF folder / hub id")
    f.add_argument("--init-sr", default=None, metavar="MODEL", help="an IF stage II to fine-tune after --init's stage I")
    f.add_argument("--train-stages", default=None, metavar="K[,K...]",
                   help="the stages that train, e.g. 0 or 0,1 (default: all); with --init the others stay frozen, "
                        "without it they are left to another run (join the runs with `openimagen merge-stages`)")
    f.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank only (peft)")
    f.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    f.add_argument("--lora-dropout", type=float, default=0.0)
    f.add_argument("--lora-targets", default=None, metavar="NAME[,NAME...]",
                   help="layer names that get adapters (default: the attention projections)")
    f.add_argument("--lora-convs", action="store_true", help="also adapt the residual blocks' convolutions")
    f.add_argument("--merge", action="store_true", help="also write OUT/model with the adapters merged in")
    f.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (IF U-Nets)")
    f.add_argument("--caption", default=None, help='one caption for every training image, e.g. "a photo of sks dog"')
    f.add_argument("--prior-prompts", default=None, metavar="FILE",
                   help="prior preservation: a text file of class prompts (one a line) the model draws and keeps")
    f.add_argument("--prior-images", type=int, default=64, help="how many prior images to draw (default 64)")
    f.add_argument("--replay", default=None, metavar="FOLDER",
                   help="images with captions (NAME.png + NAME.txt) of the data to keep, e.g. some of the model's "
                        "own training set, mixed in as they are; kept the bundled model's skills better than "
                        "--prior-prompts (benchmarks/README.md)")


def train_stages_from_args(args) -> tuple[int, ...] | None:
    if not args.train_stages:
        return None
    try:
        return tuple(int(k) for k in args.train_stages.split(","))
    except ValueError:
        raise ValueError(f"--train-stages {args.train_stages!r}: give stage numbers, e.g. 0 or 0,1") from None


def init_from_args(args):
    """The InitConfig the options describe, or None without --init."""
    from .lora import LoraConfig
    from .train.config import InitConfig

    lora_opts = (args.lora_alpha is not None or args.lora_targets or args.lora_convs or args.lora_dropout or args.merge)
    if args.init is None:
        if (args.init_sr or args.lora_rank is not None or lora_opts or args.gradient_checkpointing
                or args.caption or args.prior_prompts or args.replay):
            raise ValueError("--init-sr, --lora-*, --caption, --prior-*, --replay and --gradient-checkpointing "
                             "fine-tune a model: "
                             "give --init MODEL (e.g. --init bundled)")
        return None
    if lora_opts and args.lora_rank is None:
        raise ValueError("--lora-alpha/--lora-targets/--lora-convs/--lora-dropout/--merge need --lora-rank R")
    train = train_stages_from_args(args)
    lora = None
    if args.lora_rank is not None:
        targets = tuple(t.strip() for t in args.lora_targets.split(",")) if args.lora_targets else None
        lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=targets,
                          convs=args.lora_convs)
    prior = None
    if args.prior_prompts is not None:
        from .train.config import PriorConfig

        path = Path(args.prior_prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prior-prompts {path}: no such file; give a text file with one prompt a line")
        prompts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        prior = PriorConfig(prompts=prompts, num_images=args.prior_images)

    if args.replay is not None and not Path(args.replay).is_dir():
        raise FileNotFoundError(f"--replay {args.replay}: no such folder; give a folder of images with captions "
                                "(NAME.png + NAME.txt), e.g. some of the data the model was trained on")

    def absolute(name):  # a local folder as an absolute path, so the run folder loads from anywhere
        return str(Path(name).resolve()) if name not in (None, "bundled") and Path(name).exists() else name
    return InitConfig(model=absolute(args.init), sr=absolute(args.init_sr), train=train, lora=lora,
                      gradient_checkpointing=args.gradient_checkpointing, merge=args.merge, caption=args.caption,
                      prior=prior, replay=str(Path(args.replay).resolve()) if args.replay else None)
