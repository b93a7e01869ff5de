"""A preset + a file + `--set` overrides -> one `TrainConfig` (train/config.py): what the CLI calls.

`load_train_config(preset, config_file, overrides)`:
    preset         a name from `TRAIN_PRESETS` (train/presets.py), the starting point
    config_file    TOML or YAML; a nested mapping merged over the preset (or a complete config);
                   it may name its own starting point with a top-level `preset = "..."`
    overrides      ["optim.lr=1e-4", "stages.0.steps=100", ...]: dotted paths checked against the
                   dataclasses; values parsed as JSON literals when they parse, else kept as strings
A retired key (a class's `LEGACY`, e.g. `lowres_aug`) is an error that names its replacement; in a
file it is read as the old spelling, unless the preset below it sets the new one (then also an error).
A tagged config (a U-Net, a text encoder) is checked against the class its "kind" names, so
`stages.0.stage.unet.dim=32` is checked against the efficient U-Net's fields; `text_encoder={"kind": "t5",
"name_or_path": "..."}` swaps the whole entry.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_dict, kind_of, tagged_members, to_dict
from .config import TrainConfig
from .presets import TRAIN_PRESETS


def load_train_config(preset: str | None, config_file: str | os.PathLike | None = None,
                      overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> TrainConfig:
    """The CLI's entry point: see the module docstring. Every error is a one-line ConfigError.
    base: a config as a dict to start from instead of a preset (a fine-tune's, train/finetune.py)."""
    if base is not None:
        return _build(base, overrides)
    file_data: dict = {}
    if config_file is not None:
        file_data = read_config_file(config_file)
        file_preset = file_data.pop("preset", None)
        preset = preset or file_preset
    if preset is None and not file_data:
        raise ConfigError(f"give a preset (one of {sorted(TRAIN_PRESETS)}) or a config file")
    if preset is not None:
        if preset not in TRAIN_PRESETS:
            raise ConfigError(f"unknown training preset {preset!r}; valid presets are {sorted(TRAIN_PRESETS)}")
        data = to_dict(TRAIN_PRESETS[preset]())
        data = _merge(data, file_data, "")
    else:
        data = file_data
    return _build(data, overrides)


def _build(data: dict, overrides) -> TrainConfig:
    for item in overrides:
        path, value = _parse_override(item)
        _set_path(data, TrainConfig, path, value)
    try:
        cfg = from_dict(TrainConfig, data, where="config")
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a __post_init__ of a nested dataclass (schedule, parameterization)
        raise ConfigError(f"config: {e}") from None
    return cfg


def read_config_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {str(path)!r} is a folder; give the path of a .toml, .yaml or .json file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r}: unknown format {suffix!r}; use .toml, .yaml/.yml or .json")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 -- each parser has its own error type
        raise ConfigError(f"config file {str(path)!r} does not parse: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: Any, update: Any, where: str) -> Any:
    """Deep merge: mappings merge key by key, lists of equal length element by element, else replace."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merge(base[k], v, f"{where}{k}.") if k in base else v
        return out
    if isinstance(base, list) and isinstance(update, list) and len(base) == len(update):
        return [_merge(b, u, f"{where}{i}.") for i, (b, u) in enumerate(zip(base, update))]
    return update


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4 or stages.0.steps=100)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key; write e.g. optim.lr=1e-4")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word such as bf16 or a path
    return key.split("."), value


def _set_path(data: dict, cls: Any, path: list[str], value: Any) -> None:
    """Set data[path] = value, checking every step of the path against the dataclass `cls`."""
    node, hint, done = data, cls, []
    for i, key in enumerate(path):
        last = i == len(path) - 1
        full = ".".join(path)
        dc = _dataclass_of(hint, node)
        if dc is not None:
            names = [f.name for f in dataclasses.fields(dc)] + (["kind"] if kind_of(dc) else [])
            if key not in names:
                where = ".".join(done) or "the top level"
                now = getattr(dc, "LEGACY", {}).get(key)  # a retired key (config.py): say what replaced it
                if now is not None:
                    raise ConfigError(f"config key {full!r} is retired: write {'.'.join([*done, now])}")
                raise ConfigError(f"unknown config key {full!r}: {where} has no {key!r}; valid keys are {names}")
            hint = typing.get_type_hints(dc)[key]
        elif isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"config key {full!r}: {'.'.join(done)} is a list of {len(node)}; "
                                  f"use an index 0..{len(node) - 1}")
            key = int(key)
            args = typing.get_args(hint)
            hint = args[0] if args else None
        elif isinstance(node, dict):
            hint = None  # a free-form mapping (kind_weights), or a tagged config of no known kind: checked when built
        else:
            raise ConfigError(f"config key {full!r}: {'.'.join(done)} is a value, not a section")
        if last:
            node[key] = value
            return
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        if isinstance(node, dict) and node[key] is None and _dataclass_of(hint, {}) is not None:
            node[key] = {}
        node = node[key]
        done.append(str(key))


def _dataclass_of(hint: Any, node: Any):
    """The dataclass that describes `node` (the data at a level whose type is `hint`), or None.

    A tagged union (`EfficientUNetConfig | IFUNetConfig`) is the member that the node's "kind" names."""
    members = tagged_members(hint)
    if members is not None:
        return members.get(node.get("kind")) if isinstance(node, dict) else None
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if dataclasses.is_dataclass(arg):
            return arg
    return None
