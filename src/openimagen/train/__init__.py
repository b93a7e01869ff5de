"""Training: every stage of a cascade in one process and one command, resumable after any kill.

    cfg = load_train_config("shapes-tiny", None, ["optim.lr=5e-4"])
    model_dir = train(cfg, "runs/tiny")            # -> runs/tiny/model (Cascade.from_pretrained)
    train(cfg, "runs/tiny", resume=True)           # after a crash: continues bit-exactly
"""
from .config import DataConfig, OptimConfig, StageTrainConfig, TrainConfig, with_max_steps
from .data import embed_dataset
from .ema import EMA
from .loop import train
from .overrides import load_train_config, read_config_file
from .presets import TRAIN_PRESETS

__all__ = [
    "TrainConfig", "StageTrainConfig", "DataConfig", "OptimConfig", "load_train_config", "read_config_file",
    "with_max_steps", "train", "embed_dataset", "TRAIN_PRESETS", "EMA",
]
