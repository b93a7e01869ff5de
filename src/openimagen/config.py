"""Frozen config dataclasses to and from JSON, with errors that name the bad key.

Every component (U-Net, schedule, stage, text encoder) is described by one frozen dataclass. It is
saved as `config.json` beside `model.safetensors`, so loading needs no other argument.

Tagged unions: a config class that declares `kind: ClassVar[str] = "..."` is *tagged*; its JSON always
carries `"kind"`, and a field annotated with a union of tagged classes (`EfficientUNetConfig |
IFUNetConfig`) is decoded into the class that the tag names. `from_dict` also takes such a union itself.
A class may define `upgrade_json(data) -> data` (a classmethod) to translate an older JSON form of
itself; `from_dict` calls it first, so each legacy form is read in one place. A class that retired keys
names them in `LEGACY: ClassVar[dict]` (old key -> what to write now): `rename_legacy` translates plain
renames, and an override naming a retired key is told what to write instead (train/overrides.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_UNIONS = (typing.Union, types.UnionType)


# A field added after configs were shipped may carry metadata={OMIT_DEFAULT: True}: at its default it is left
# out of the JSON, so every file written before it existed is still written byte for byte the same.
OMIT_DEFAULT = "omit_default"


class ConfigError(ValueError):
    """A config file or override names a key or value we do not understand."""


def kind_of(cls: Any) -> str | None:
    """The tag of a tagged config class (its class-level `kind`), or None for any other type."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return None
    if any(f.name == "kind" for f in dataclasses.fields(cls)):  # a plain field (ScheduleConfig.kind): no tag
        return None
    kind = getattr(cls, "kind", None)
    return kind if isinstance(kind, str) else None


def tagged_members(hint: Any) -> dict[str, type] | None:
    """{kind: class} when `hint` is a union of two or more tagged dataclasses (None may join them), else None."""
    if typing.get_origin(hint) not in _UNIONS:
        return None
    classes = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    if len(classes) < 2:
        return None
    members = {kind_of(c): c for c in classes}
    if None in members or len(members) != len(classes):  # a programming error, not bad input
        raise TypeError(f"the union {hint} mixes dataclasses without a distinct ClassVar `kind` tag")
    return members


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists, nested dataclasses dicts, tags "kind")."""
    return json.loads(json.dumps(_plain(cfg)))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = kind_of(type(value))
        out = {} if kind is None else {"kind": kind}
        out.update({f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not (f.metadata.get(OMIT_DEFAULT) and getattr(value, f.name) == f.default)})
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_dict(cls: type[T] | Any, data: dict, *, where: str = "config") -> T:
    """Build `cls` (a dataclass, or a union of tagged ones) from a dict, rejecting unknown keys and
    converting lists back to tuples."""
    members = tagged_members(cls)
    if members is not None:
        return from_dict(_pick(members, data, where), data, where=where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    upgrade = getattr(cls, "upgrade_json", None)
    if upgrade is not None:
        data = upgrade(data)
    kind = kind_of(cls)
    if kind is not None and "kind" in data:
        if data["kind"] != kind:
            raise ConfigError(f"{where}: kind {data['kind']!r} does not describe {cls.__name__} (kind {kind!r})")
        data = {k: v for k, v in data.items() if k != "kind"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = sorted(fields) + (["kind"] if kind is not None else [])
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys are {valid}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints.get(name), value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None


def rename_legacy(data: dict, renamed: dict[str, str], what: str) -> dict:
    """`data` with each old key of `renamed` (old -> new) under its new name. Both at once is an error: a
    file with the old name, merged over a preset that has the new one, must not lose its value silently."""
    both = [(old, new) for old, new in renamed.items() if old in data and new in data]
    if both:
        old, new = both[0]
        raise ConfigError(f"{what}: {old!r} is the old name of {new!r}; write only {new!r}")
    if not any(old in data for old in renamed):
        return data
    return {renamed.get(k, k): v for k, v in data.items()}


def _pick(members: dict[str, type], data: Any, where: str) -> type:
    """The member of a tagged union that `data["kind"]` names."""
    kinds = sorted(members)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object with a \"kind\" (one of {kinds}), "
                          f"got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in members:
        what = "has no \"kind\"" if kind is None else f"has unknown kind {kind!r}"
        raise ConfigError(f"{where} {what}; valid kinds are {kinds}")
    return members[kind]


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    members = tagged_members(hint)
    if members is not None:
        if value is None and type(None) in typing.get_args(hint):
            return None
        if isinstance(value, tuple(members.values())):
            return value
        return from_dict(hint, value, where=where)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where=where)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else None
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in _UNIONS:
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value, where=where)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return _coerce(arg, value, where)
    return value


def save_json(cfg: Any, path: str | os.PathLike) -> None:
    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing config file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); re-save the model or restore the file") from None
