"""Bind parsed TOML tables onto frozen dataclasses, strictly.

Every problem is reported with the file, the dotted key and what was expected, and all
problems of one file are collected in a single pass. Supported field types: ``str``,
``int``, ``float``, ``bool``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``,
``dict[str, X]``, nested dataclasses and :class:`~.secrets.Secret`.

A field may carry ``metadata={"check": fn}`` where ``fn(value) -> str | None`` returns
what was expected when the value is bad.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal, TypeVar, Union

from ..errors import ConfigError
from .secrets import Secret, SecretResolutionError, resolve_secret, secret_source

T = TypeVar("T")
Check = Callable[[Any], "str | None"]

_MISSING = object()


class Binder:
    """Collects :class:`ConfigError` s while binding one file."""

    def __init__(self, file: str, env: dict[str, str] | None = None, *, resolve_secrets: bool = True) -> None:
        self.file = file
        self.env = env
        self.resolve_secrets = resolve_secrets
        self.errors: list[ConfigError] = []

    def error(self, key: str, expected: str) -> None:
        self.errors.append(ConfigError(self.file, key, expected))

    def bind(self, cls: type[T], data: Any, prefix: str = "") -> T | None:
        """Build ``cls`` from ``data``; returns None (and records errors) when invalid."""
        if not isinstance(data, dict):
            self.error(prefix, f"expected a table, got {_describe(data)}")
            return None
        hints = typing.get_type_hints(cls)
        # A field's TOML name is its own, or metadata["toml"] where it is a Python keyword.
        fields = {toml_name(f): f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        ok = True
        for key in data:
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.error(_join(prefix, key), f"unknown key (known keys here: {known})")
                ok = False
        for name, f in fields.items():
            dotted = _join(prefix, name)
            if name not in data:
                if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] is not Secret:
                    # An absent table is an empty one: bind it so its own checks run and
                    # report under its dotted name.
                    value = self.convert(hints[f.name], {}, dotted)
                    if value is _MISSING:
                        ok = False
                    else:
                        kwargs[f.name] = value
                elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.error(dotted, "required key is missing")
                    ok = False
                continue
            value = self.convert(hints[f.name], data[name], dotted)
            if value is _MISSING:
                ok = False
                continue
            check: Check | None = f.metadata.get("check")
            if check is not None and value is not None:
                problem = check(value)
                if problem:
                    self.error(dotted, problem)
                    ok = False
                    continue
            kwargs[f.name] = value
        if not ok:
            return None
        try:
            return cls(**kwargs)
        except ValueError as exc:  # cross-field checks in __post_init__
            self.error(prefix, str(exc))
            return None

    def convert(self, tp: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return self.convert(inner[0], value, key)
            raise TypeError(f"unsupported union {tp}")
        if origin is Literal:
            if value in args:
                return value
            choices = " | ".join(repr(a) for a in args)
            return self._bad(key, f"expected one of {choices}, got {value!r}")
        if origin is tuple:
            if not isinstance(value, list):
                return self._bad(key, f"expected an array, got {_describe(value)}")
            items = [self.convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
            return _MISSING if any(i is _MISSING for i in items) else tuple(items)
        if origin is dict:
            if not isinstance(value, dict):
                return self._bad(key, f"expected a table, got {_describe(value)}")
            out = {k: self.convert(args[1], v, _join(key, k)) for k, v in value.items()}
            return _MISSING if any(v is _MISSING for v in out.values()) else out
        if tp is Secret:
            if not isinstance(value, str) or not value:
                return self._bad(key, "expected a non-empty string: ${ENV_VAR}, cred:NAME, file:/path or a literal")
            if not self.resolve_secrets:
                return Secret("", secret_source(value))
            try:
                return resolve_secret(value, self.env)
            except SecretResolutionError as exc:
                return self._bad(key, str(exc))
        if dataclasses.is_dataclass(tp):
            built = self.bind(tp, value, key)  # type: ignore[arg-type]
            return _MISSING if built is None else built
        if tp is bool:
            if isinstance(value, bool):
                return value
            return self._bad(key, f"expected true or false, got {_describe(value)}")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            return self._bad(key, f"expected an integer, got {_describe(value)}")
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            return self._bad(key, f"expected a number, got {_describe(value)}")
        if tp is str:
            if isinstance(value, str):
                return value
            return self._bad(key, f"expected a string, got {_describe(value)}")
        raise TypeError(f"unsupported config field type {tp!r} at {key}")

    def _bad(self, key: str, expected: str) -> Any:
        self.error(key, expected)
        return _MISSING


def toml_name(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    return str(f.metadata.get("toml", f.name))


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    if key.replace("_", "").replace("-", "").isalnum():
        return f"{prefix}.{key}"
    return f'{prefix}."{key}"'


def _describe(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "an array", dict: "a table"}
    kind = names.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    return f"{kind} ({value!r})"
