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
import math
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
        try:
            kwargs[name] = _coerce(hints.get(name), value, f"{where}.{name}")
        except _TypeMismatch as e:
            default = fields[name].default
            if e.where != f"{where}.{name}" or default is dataclasses.MISSING or default is None:
                raise
            key = e.where.split(".", 1)[-1]
            raise _TypeMismatch(e.hint, e.value, e.where, f"{key}={json.dumps(_plain(default))}") from None
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
    """`value` checked against the field's declared type `hint` (nested configs built, lists made tuples);
    a value of another type is a ConfigError naming the field, the value and what to write."""
    members = tagged_members(hint)
    if members is not None:
        if value is None and type(None) in typing.get_args(hint):
            return None
        if isinstance(value, tuple(members.values())):
            return value
        if isinstance(value, str):  # `--set text_encoder=t5`: a kind's name where its table belongs
            kind = value if value in members else sorted(members)[0]
            raise ConfigError(f"{where}={value!r} must be a table with a \"kind\" (one of {sorted(members)}) and "
                              f"its settings, e.g. {where.split('.', 1)[-1]}={json.dumps(_example(members[kind]))}")
        return from_dict(hint, value, where=where)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where=where)
        raise ConfigError(f"{where}={value!r} must be a table of {hint.__name__}'s settings (keys "
                          f"{[f.name for f in dataclasses.fields(hint)]})")
    return _typed(hint, value, where)


def _typed(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNIONS:
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise _type_error(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(hint, value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise _type_error(hint, value, where)
        return tuple(_coerce(a, v, f"{where}.{i}") for i, (a, v) in enumerate(zip(args or [None] * len(value), value)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(hint, value, where)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(hint, value, where)
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-4 as a string; "fast" and "" stay errors
            try:
                value = float(value)
            except ValueError:
                raise _type_error(hint, value, where) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(hint, value, where)
        if not math.isfinite(value):
            raise _TypeMismatch(hint, value, where)
        return value
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(hint, value, where)
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _type_error(hint, value, where)
    return value  # Any, or an annotation we do not check


_NAMES = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string", dict: "a table",
          type(None): "null"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNIONS:
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} table"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


_EXAMPLES = {bool: "true", int: "10", float: "0.0001", str: '"text"', dict: "{}", type(None): "null"}


def _example_of(hint: Any, where: str) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    key = where.split(".", 1)[-1]
    if origin in _UNIONS:
        hint = next(a for a in args if a is not type(None))
        return _example_of(hint, where)
    if origin is tuple:
        items = [args[0]] * 2 if len(args) == 2 and args[1] is Ellipsis else list(args)
        inner = [_EXAMPLES.get(a, "...") for a in items]
        if all(a is float for a in items):
            inner = ["0.9", "0.99"][:len(items)] + ["0.9"] * max(0, len(items) - 2)
        if all(a is str for a in items):
            inner = ['"a red circle"', '"a blue square"'][:len(items)]
        return f"{key}=[{', '.join(inner)}]"
    return f"{key}={_EXAMPLES.get(hint, '...')}"


class _TypeMismatch(ConfigError):
    """A value of the wrong type; `from_dict` rewrites the example with the field's default when it has one."""

    def __init__(self, hint: Any, value: Any, where: str, example: str | None = None):
        self.hint, self.value, self.where = hint, value, where
        super().__init__(f"{where}={value!r} must be {_describe(hint)}, e.g. {example or _example_of(hint, where)}")


def _type_error(hint: Any, value: Any, where: str) -> ConfigError:
    return _TypeMismatch(hint, value, where)


def _example(cls: type) -> dict:
    """A table for a tagged config class: its kind and its required fields' defaults (for messages)."""
    out = {"kind": kind_of(cls)}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            out[f.name] = "..."
    if "name_or_path" in out:  # the one such field today: T5's
        out["name_or_path"] = "google/t5-v1_1-base"
    return out


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
