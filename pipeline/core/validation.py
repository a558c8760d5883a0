"""A small typed validator over dataclasses: keys, types, paths; errors collected, not raised.

Why by hand: the schema is plain dataclasses (no pydantic dependency), and the messages must
name the dotted key and suggest the nearest valid one (``train.epoch: unknown key (did you mean
'epochs'?)``), which generic validators do not do in this form.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union


def suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build(cls, raw: Any, prefix: str, base_dir: Path, errors: list[str], skip: set[str] = frozenset()):
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and types; errors are collected."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    allowed = set(fields) | ({"name"} if prefix == "model." else set())
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            errors.append(f"{prefix}{key}: unknown key{suggest(str(key), allowed)}")
            continue
        if key not in fields:
            continue
        kwargs[key] = coerce(value, hints[key], f"{prefix}{key}", base_dir, errors)
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs and n not in raw]
    if required:
        errors.append(f"{prefix.rstrip('.') or 'config'}: missing required key(s) {', '.join(map(repr, required))}")
        return None
    return cls(**kwargs)


def coerce(value: Any, tp: Any, key: str, base_dir: Path, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".", base_dir, errors)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:  # the first member that accepts the value; the last one reports errors
            trial: list[str] = []
            out = coerce(value, member, key, base_dir, trial)
            if not trial:
                return out
        return coerce(value, inner[-1], key, base_dir, errors)
    if origin is Literal:
        if value not in args:
            errors.append(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}{suggest(str(value), map(str, args))}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a path string, got {type(value).__name__}")
            return value
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected a list, got {value!r}")
            return value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                errors.append(f"{key}: expected {len(args)} values, got {len(value)}")
                return value
            return tuple(coerce(v, a, f"{key}[{i}]", base_dir, errors) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{key}[{i}]", base_dir, errors) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    return value


def added(default: Any, when: str) -> Any:
    """A parameter added after runs were made with the code that lacked it: at ``default`` (which
    must reproduce the old behaviour) it is left out of stage fingerprints, so finished runs stay
    finished (``when``: the date it was added, for the reader). A list or dict default is copied
    for each instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"added": when})
    return dataclasses.field(default=default, metadata={"added": when})


def _at_default(obj: Any, f: dataclasses.Field) -> bool:
    """True when field ``f`` of ``obj`` holds its (possibly factory-made) default."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return getattr(obj, f.name) == default


def to_plain(obj: Any, fingerprint: bool = False) -> Any:
    """Dataclasses/paths/tuples → JSON-able builtins (stable, for hashing and the manifest).

    ``fingerprint``: leave out :func:`added` parameters that hold their default.
    """
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name), fingerprint) for f in dataclasses.fields(obj)
                if not (fingerprint and "added" in f.metadata and _at_default(obj, f))}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, fingerprint) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v, fingerprint) for k, v in obj.items()}
    return obj
