"""Typed configuration: dataclasses loaded from YAML with ``key.sub=value`` overrides.

Every run folder gets the fully resolved configuration (:func:`dump_config`),
so a run can be reproduced from that file alone.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ragsam.errors import InputError

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, where: str, source: str) -> Any:
    """Convert a YAML/override value to ``annotation`` (dataclass, list, tuple, scalar, Optional)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], where, source)
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise InputError(source, f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, source=source, prefix=where + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    try:
        if annotation is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float) and isinstance(value, bool):
            raise ValueError(value)  # bool is an int to Python; max_iterations=true is a mistake
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return annotation(value)
    except (TypeError, ValueError):
        raise InputError(source, f"{where}: {value!r} is not a valid {annotation.__name__}") from None
    return value


def from_dict(cls: type[T], data: dict, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise InputError(source, f"configuration key {prefix}{odd[0]!r} is not a name (known: {', '.join(sorted(names))})")
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(source, f"unknown configuration key {prefix + unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """A dataclass instance as plain YAML-safe Python (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, os.PathLike):
            return str(v)
        return v

    return plain(obj)


def apply_overrides(data: dict, overrides: list[str], source: str = "<command line>") -> dict:
    """Apply ``a.b=value`` strings to a nested mapping (values parsed as YAML scalars)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise InputError(source, f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def with_overrides(obj: T, overrides: list[str], source: str = "<command line>") -> T:
    """A copy of dataclass ``obj`` with ``a.b=value`` strings applied (for overrides a user wrote:
    the command line, a plan file). Code that changes a configuration uses ``dataclasses.replace``."""
    if not overrides:
        return obj
    return from_dict(type(obj), apply_overrides(to_dict(obj), overrides, source), source=source)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, updated by a YAML file and then by overrides.

    Raises:
        InputError: unreadable YAML, unknown keys or values of the wrong type.
    """
    data: dict = to_dict(cls())
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise InputError(path, "configuration file does not exist") from None
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(path, "configuration must be a YAML mapping")
        data = _deep_merge(data, loaded)
    if overrides:
        from_dict(cls, data, source=source)  # the file alone is valid: later errors are the overrides'
        data = apply_overrides(data, overrides)
        source = "<command line>"
    return from_dict(cls, data, source=source)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_config(obj: Any) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
