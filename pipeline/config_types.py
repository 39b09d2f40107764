"""Type checks for the stages' frozen config dataclasses, from their own annotations.

Every config checks itself in `__post_init__` (`check_field_types(self)`), so the Python API
(`embslim.FinetuneConfig(epochs="two")`), a config file and the CLI flags all get the same one-line
answer naming the option, the type it needs and an example, instead of Python's own message
later (or a string taken as a list of characters).
"""

from __future__ import annotations

import json
import types
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config file or option is wrong."""


def check_field_types(config: Any) -> None:
    """Raise ConfigError for the first field of the dataclass instance `config` whose value does not
    fit its annotation's types (lists are accepted for tuples; ints for floats; never bools for
    numbers). A `Literal` is checked for its type only: which values are allowed, each config
    says itself, naming the known ones."""
    cls = type(config)
    hints = get_type_hints(cls)
    for f in fields(cls):
        value = getattr(config, f.name)
        if not _fits(value, _types_only(hints[f.name])):
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else None)
            example = (f"{f.name} = {json.dumps([value])}" if isinstance(value, str) and get_origin(hints[f.name]) is tuple
                       else _example(f.name, hints[f.name], default))
            raise ConfigError(f"{cls.__name__}: {f.name} must be {_type_name(hints[f.name])}, got "
                              f"{type(value).__name__} {value!r}; e.g. {example}")


def _type_name(hint: Any) -> str:
    """A config type as a user reads it: 'an integer', 'true or false', 'a list of strings', ..."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (" (or omitted)" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if args and get_origin(args[0]) is Literal:
            return "a list of values from " + ", ".join(repr(a) for a in get_args(args[0]))
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if is_dataclass(hint):
        return "a table of options"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}.get(hint, str(hint))


def _fits(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if hint is dict or origin is dict or is_dataclass(hint):
        return isinstance(value, (dict, hint)) if is_dataclass(hint) else isinstance(value, dict)
    return True


def _example(key: str, hint: Any, default: Any) -> str:
    """`key = <value>` in TOML, from the field's default (or its type when the default is None)."""
    if default is None or default is MISSING:
        default = next((d for t, d in ((bool, True), (int, 1), (float, 0.5), (str, "text")) if _fits(d, hint)), None)
        if get_origin(hint) is Literal:
            default = get_args(hint)[0]
    if isinstance(default, tuple):
        default = list(default) or ([get_args(get_args(hint)[0])[0]] if get_origin(get_args(hint)[0]) is Literal else ["text"])
    if is_dataclass(default) or default is None:
        return f"[{key}] then one option per line"
    return f"{key} = {json.dumps(default)}"


def _types_only(hint: Any) -> Any:
    """`hint` with every Literal[...] replaced by its values' type (Literal["a", "b"] -> str)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else Any
    if origin in (Union, types.UnionType):
        return Union[tuple(_types_only(a) for a in args)]
    if origin is tuple and args:
        return tuple[(_types_only(args[0]), *args[1:])]
    return hint
