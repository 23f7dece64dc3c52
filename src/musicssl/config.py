"""Typed configs: frozen dataclasses, nested; JSON round trip and dotted `key=value` overrides.

    apply_overrides(run_config, ["trainer.max_steps=100", "model.mask.mask_prob=0.65"])

Values are parsed by the field's declared type (int, float, bool, str, tuples), so a typo in
a key or a value that does not fit fails with the path and the expected type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting the user can fix (a preset, a key, a value): a ValueError, so the CLI prints it
    as one line and exits 2."""


class UnknownName(ConfigError, KeyError):
    """A name a registry does not hold. Also a KeyError, so `Mapping.get` and `in` work and
    callers that caught the dicts' KeyError still do."""

    __str__ = BaseException.__str__  # KeyError's would quote the message


class Registry(Mapping[str, T]):
    """Named presets of one family (backbone presets, recipes, variants): a read-only mapping
    whose `registry[name]` of an unknown name says which names exist, in one line.

        BACKBONES = Registry("backbone preset", {"base": BASE, "tiny": TINY})
        BACKBONES["x"]  # ConfigError: unknown backbone preset 'x'; known: base, tiny
    """

    def __init__(self, what: str, entries: Mapping[str, T] | None = None):
        self.what = what
        self._entries: dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.register(name, value)

    def register(self, name: str, value: Any = dataclasses.MISSING) -> Any:
        """Add `value` under `name`; without a value, a decorator that adds what it decorates."""
        if value is dataclasses.MISSING:
            return lambda decorated: self.register(name, decorated)
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = value
        return value

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.what} {name!r}; known: {', '.join(self._entries)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def to_dict(config: Any) -> Any:
    """A dataclass tree -> plain JSON-able values (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def from_dict(cls: type, values: dict, path: str = "") -> Any:
    """Inverse of `to_dict` for dataclass `cls`; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config keys {sorted(f'{path}{k}' for k in unknown)}")
    kwargs = {name: _coerce(hints[name], value, f"{path}{name}") for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping for {hint.__name__}, got {value!r}")
        return from_dict(hint, value, path + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            with contextlib.suppress(ValueError, TypeError):  # the next option may fit
                return _coerce(option, value, path)
        raise ValueError(f"{path}: {value!r} fits none of {hint}")
    if origin is tuple:
        args = typing.get_args(hint)
        items = list(value) if isinstance(value, (list, tuple)) else _parse_sequence(value, path)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, path) for v in items)
        if len(args) != len(items):
            raise ValueError(f"{path}: expected {len(args)} values, got {items!r}")
        return tuple(_coerce(a, v, path) for a, v in zip(args, items))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{path}: expected one of {typing.get_args(hint)}, got {value!r}")
        return value
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{path}: expected true/false, got {value!r}")
    if hint in (int, float, str):
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: expected {hint.__name__}, got {value!r}") from None
    return value


def _parse_sequence(text: Any, path: str) -> list:
    if not isinstance(text, str):
        raise ValueError(f"{path}: expected a sequence, got {text!r}")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = [part for part in text.strip("()[]").split(",") if part.strip()]
    return list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return a copy of `config` with each dotted `key=value` applied (values parsed by type).
    All overrides are applied before the config is rebuilt, so fields that are checked
    against each other (e.g. num_layers and a layer count) can change together."""
    values = to_dict(config)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r} must look like key=value, e.g. trainer.max_steps=100")
        key, raw = override.split("=", 1)
        _set_path(values, key.strip().split("."), _parse_literal(raw.strip()), key.strip())
    return from_dict(type(config), values)


def _parse_literal(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _set_path(values: dict, parts: list[str], value: Any, key: str) -> None:
    for depth, part in enumerate(parts):
        if not isinstance(values, dict) or part not in values:
            known = sorted(values) if isinstance(values, dict) else []
            raise ValueError(f"unknown config key {key!r}: {part!r} is not one of {known}")
        if depth == len(parts) - 1:
            values[part] = value
        else:
            values = values[part]


def fingerprint(value: Any) -> str:
    """16 hex digits of sha256 over `value` as canonical JSON: the identity an artefact records of
    what made it (manifest rows, label-set arguments), so a consumer can check it cheaply."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_json(path: Any) -> Any:
    """A JSON file's content; a damaged one is a ConfigError naming the file (json's own message
    names only a line and column, which on the CLI's one error line says nothing)."""
    try:
        return json.loads(open(path, "rb").read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
