"""Recipes in and out: YAML to the typed schema (with ``--set`` overrides) and back.

Values are parsed as YAML and then converted to the field's type; unknown keys are refused with
the closest valid name (see :mod:`vlcd_dist.config`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from vlcd_dist.config.recipes import resolve_recipe
from vlcd_dist.config.schema import TrainConfig
from vlcd_dist.errors import ConfigError, VlcdError

_BOOL = "tag:yaml.org,2002:bool"


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's booleans: only ``true`` and ``false`` (any case) are
    booleans, so ``no``, ``off``, ``yes`` and ``on`` stay strings, as in
    ``--set run.mixed_precision=no`` (YAML 1.1 would read a bool and the field would refuse it)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """Parse recipe or ``--set`` text with :class:`RecipeLoader`."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


# ---------------------------------------------------------------------------------------------
# Dict <-> dataclass


def _field_doc(cls: type, name: str) -> str:
    """The attribute docstring under a field (the one-line doc), read from the source."""
    import ast
    import inspect

    for klass in cls.__mro__:
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                return nxt.value.value.strip()
    return ""


def field_docs(cls: type) -> dict[str, str]:
    """{field name: one-line doc} of a config dataclass."""
    return {f.name: _field_doc(cls, f.name) for f in dataclasses.fields(cls)}


def _unknown(path: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    where = f"{path}.{key}" if path else key
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown key {where!r}{hint} Valid keys here: {', '.join(valid)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` (from YAML) as type ``tp``, or ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, path)
            except ConfigError as exn:
                errors.append(str(exn))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}={value!r}: {errors}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(tp)}:
            value = {"name": value}  # `students: [efficientnet_b0, ...]` shorthand
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r}: expected a mapping, e.g. {{key: value}}")
        key_tp, value_tp = args or (Any, Any)
        return {
            _convert(k, key_tp, path): _convert(v, value_tp, f"{path}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r}: expected a list, e.g. [1, 2]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}={value!r}: expected a list of {len(args)} values")
            return tuple(
                _convert(v, a, f"{path}.{i}")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(
            f"{path}={value!r}: expected true or false (the only booleans: yes, no, on and off "
            "are strings)"
        )
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}: expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 3e-4 as a string; it is a number to any user.
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        raise ConfigError(f"{path}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}={value!r}: expected a string")
    raise ConfigError(f"{path}: cannot read a value of type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(path, str(key), list(fields))
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except VlcdError as exn:
        raise ConfigError(f"{path or cls.__name__}: {exn}") from exn
    except (TypeError, ValueError) as exn:
        raise ConfigError(f"{path or cls.__name__}: {exn}") from exn


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready structure of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.0.c=value' -> (['a', 'b', '0', 'c'], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exn:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exn})") from exn
    return parts, value


def _schema_at(cls: Any, parts: list[str]) -> None:
    """Check that a dotted path names a field (list items by index); ConfigError otherwise."""
    tp: Any = cls
    done: list[str] = []
    for part in parts:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            valid = [f.name for f in dataclasses.fields(tp)]
            if part not in valid:
                raise _unknown(".".join(done), part, valid)
            tp = hints[part]
        elif origin in (list, tuple):
            if not part.isdigit():
                raise ConfigError(
                    f"{'.'.join(done)} is a list: address items by index, e.g. {'.'.join(done)}.0"
                )
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        else:
            raise ConfigError(f"{'.'.join(done)} is a value, it has no field {part!r}")
        done.append(part)


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``data[parts[0]][parts[1]]... = value``, creating mappings on the way."""
    _schema_at(TrainConfig, parts)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(
                    f"{'.'.join(parts[: i + 1])}: index out of range ({len(node)} items)"
                )
            if isinstance(node[idx], str):
                node[idx] = {"name": node[idx]}  # shorthand list item -> its mapping
            node = node[idx]
            continue
        if node.get(part) is None:
            if nxt_is_index:
                node[part] = _default_list(parts[: i + 1])
            else:
                node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx >= len(node):
            raise ConfigError(f"{'.'.join(parts)}: index out of range ({len(node)} items)")
        node[idx] = value
    else:
        node[last] = value


def _default_list(parts: list[str]) -> list[Any]:
    value: Any = to_dict(TrainConfig())
    for p in parts:
        value = value[int(p)] if isinstance(value, list) else value[p]
    return value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML recipe (a file, or a built-in recipe's name: see :mod:`.recipes`; the
    defaults when ``path`` is None), apply ``--set`` overrides, convert and validate. Raises
    ConfigError with the offending key and a fix."""
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_recipe(path)
        try:
            loaded = read_yaml(path.read_text())
        except yaml.YAMLError as exn:
            raise ConfigError(f"{path} is not valid YAML: {exn}") from exn
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections (run:, data:, ...)")
        data = loaded or {}
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    cfg = from_dict(TrainConfig, data)
    cfg.validate()
    return cfg


def dump_yaml(cfg: TrainConfig) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
