"""Typed configuration: one base class for every model and run config, and one way to turn text into typed values.

A config is a dataclass deriving from :class:`Config`. Each field carries a type annotation and, through
:func:`option`, a one-line help text and optional bounds or choices. The base class then gives every config:

- checks on construction: each value must fit its annotation, be finite (NaN never; infinity only where the field
  allows it), lie within its bounds and choices; errors name ``Class.field`` and the value;
- ``to_dict`` / ``from_dict`` (unknown keys are refused with the list of valid ones) and ``save`` / ``load`` of a
  JSON file (written atomically, read with errors naming the file);
- :func:`parse_value`: the value of a field from command-line text (``--key=value``), by the field's type;
- :func:`describe`: one line per field (name, type, default, help) for ``--help``.

Cross-field rules live in each config's ``validate()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tempfile
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Config", "ConfigError", "atomic_write_text", "describe", "option", "parse_value", "read_json",
           "unknown_key"]


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field (``Class.field``) or the file."""


def option(
    default: Any = MISSING,
    *,
    help: str,  # noqa: A002 - the word users know from argparse
    default_factory: Any = MISSING,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    choices: tuple | None = None,
    allow_inf: bool = False,
    path: bool = False,
):
    """A dataclass field with a help line and checks. ``min``/``max``/``choices`` apply to a number or string, or
    to every element of a list; ``allow_inf`` lets a float be infinite (NaN is never allowed); ``path`` marks a
    file or folder name, whose leading ``~`` is expanded."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "allow_inf": allow_inf, "path": path}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint) -> str:
    if _is_union(hint):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    if origin is list:
        args = typing.get_args(hint)
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(hint, "__name__", str(hint))


def _fit(value, hint):
    """``value`` converted to ``hint`` (int -> float, tuple -> list, dict -> nested Config), or raise TypeError."""
    if hint is Any:
        return value
    if _is_union(hint):
        for arg in typing.get_args(hint):
            try:
                return _fit(value, arg)
            except TypeError:
                continue
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    origin = typing.get_origin(hint)
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (item,) = typing.get_args(hint) or (Any,)
        return [_fit(v, item) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint.from_dict(value)
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # 1e6 written in a TOML or JSON file
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(value, hint):
        return value
    raise TypeError


def _scalars(value, where: str = ""):
    """(``[i][j]`` path, scalar) for every scalar in ``value``, nested lists included."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            yield from _scalars(v, f"{where}[{i}]")
    elif not isinstance(value, (dict, Config)):
        yield where, value


def _check_field(owner: str, f: dataclasses.Field, value, hint):
    name = f"{owner}.{f.name}"
    try:
        value = _fit(value, hint)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name}={value!r} does not match its type {_type_name(hint)}") from None
    meta = f.metadata
    if meta.get("path") and isinstance(value, str):
        value = os.path.expanduser(value)
    for where, v in _scalars(value):
        if v is None:
            continue
        at = f"{name}{where}={v!r}"
        if isinstance(v, float) and not math.isfinite(v):
            if math.isnan(v) or not meta.get("allow_inf"):
                raise ConfigError(f"{at}: must be a finite number")
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ConfigError(f"{at}: must be one of {', '.join(map(repr, meta['choices']))}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and v < lo:
                raise ConfigError(f"{at}: must be >= {lo}")
            if hi is not None and v > hi:
                raise ConfigError(f"{at}: must be <= {hi}")
    return value


def unknown_key(key: str, valid: list[str], what: str = "key") -> ConfigError:
    """The error for an unknown key: the closest valid key (if any is close) and the list of valid ones."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {what} {key!r}{hint}; valid: {', '.join(valid)}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader sees the old
    file or the new one, never a part. Raises OSError naming ``path`` (for example on a full disk)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror} while writing {path}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Config:
    """Base of every configuration dataclass (see the module docstring)."""

    _hints: ClassVar[dict[type, dict]] = {}

    def __post_init__(self):
        hints = self.hints()
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check_field(type(self).__name__, f, getattr(self, f.name),
                                                          hints[f.name]))
        self.validate()

    @classmethod
    def hints(cls) -> dict[str, Any]:
        """Resolved type annotations of the fields."""
        if cls not in Config._hints:
            Config._hints[cls] = typing.get_type_hints(cls)
        return Config._hints[cls]

    def validate(self) -> None:
        """Rules that involve several fields; raise :class:`ConfigError` naming the field."""

    def fail(self, name: str, why: str) -> typing.NoReturn:
        """Raise ConfigError for field ``name`` (a dotted path such as ``layers[2]`` is fine)."""
        root = name.split("[", 1)[0].split(".", 1)[0]
        value = getattr(self, root, None)
        raise ConfigError(f"{type(self).__name__}.{name}={value!r}: {why}")

    def to_dict(self) -> dict:
        """Plain values of every field, the most specific class's fields first (how a reader scans config.json)."""
        return {name: _plain(getattr(self, name)) for name in self.field_names(specific_first=True)}

    @classmethod
    def field_names(cls, *, specific_first: bool = False) -> list[str]:
        names = [f.name for f in dataclasses.fields(cls)]
        if not specific_first:
            return names
        ordered = []
        for klass in cls.__mro__:
            ordered += [n for n in vars(klass).get("__annotations__", {}) if n in names and n not in ordered]
        return ordered

    @classmethod
    def from_dict(cls, data: dict, *, source: str | None = None):
        """Build a config from plain values, refusing unknown keys (listing the valid ones) and values that do not
        fit their field; ``source`` (a file name) prefixes the message."""
        try:
            if not isinstance(data, dict):
                raise ConfigError(f"{cls.__name__} must be given as a table/object of its fields, got "
                                  f"{type(data).__name__}")
            valid = cls.field_names(specific_first=True)
            for key in data:
                if key not in valid:
                    raise unknown_key(key, valid, f"{cls.__name__} key")
            return cls(**data)
        except ConfigError as exc:
            if source is None:
                raise
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self, **changes):
        """A checked copy with ``changes`` applied."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a config written by :meth:`save`; errors name the file."""
        return cls.from_dict(read_json(path), source=str(path))


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; ConfigError naming the file when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _plain(value):
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(key: str, text: str, hint) -> Any:
    """A command-line string as a value of the annotated type, or ConfigError naming ``--key``.

    Numbers and booleans as usual (``true``/``false``/``1``/``0``); ``none`` for an optional field; a list as
    ``[4,4,4]`` (JSON/TOML, nesting allowed) or ``4,4,4``; a string as written.
    """
    if _is_union(hint):
        args = typing.get_args(hint)
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
    else:
        kinds = [hint]
    for kind in kinds:
        try:
            return _parse_one(text, kind)
        except (ValueError, TypeError):
            continue
    raise ConfigError(f"--{key}={text!r} is not a valid {_type_name(hint)}")


def _parse_one(text: str, kind):
    origin = typing.get_origin(kind)
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if kind is int:
        return int(text.strip())
    if kind is float:
        return float(text.strip())
    if kind is str:
        return text
    if origin is list or kind is list:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                value = tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError:
                value = json.loads(stripped)
        else:
            (item,) = typing.get_args(kind) or (str,)
            value = [_parse_one(part.strip(), item) for part in stripped.split(",") if part.strip()]
        return _fit(value, kind)
    raise ValueError


def describe(cls: type[Config], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field of ``cls``, for ``--help`` listings."""
    rows = []
    hints = cls.hints()
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        default = _plain(default)
        rows.append((prefix + f.name, _type_name(hints[f.name]), json.dumps(default), f.metadata.get("help", "")))
    return rows
