"""Typed configuration loading: YAML (with one optional `base:` level) + dotted overrides -> frozen dataclasses.

The dataclasses in `attnseg.config.schema` are the single source of truth for what a config may say. This module
only knows how to turn plain YAML data into them, checking every key and type on the way, so that a typo is
an error that names the key and lists the valid ones instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from attnseg.config.schema import FieldError
from attnseg.errors import ConfigError

T = TypeVar("T")

# A number written with an exponent but no dot (``1e-3``) is a string to YAML 1.1; a float field accepts it.
_NUMBER_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=0.01"`` into (``["train", "lr"]``, ``0.01``); the value is parsed as YAML.

    >>> parse_override("eval.scales=[0.5,1.0,2.0]")
    (['eval', 'scales'], [0.5, 1.0, 2.0])
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key.strip().split("."), parsed


def merge_dicts(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge where `update` wins; lists are replaced, not concatenated."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_with_base(path: str | Path) -> dict[str, Any]:
    """Read a YAML experiment file; a top-level `base:` names one file (relative to this one) it extends.

    Only one level is allowed, so what a config means can be read from at most two files.
    """
    path = Path(path)
    data = _read_yaml_mapping(path)
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    base_path = (path.parent / base_name).resolve()
    base = _read_yaml_mapping(base_path)
    if "base" in base:
        raise ConfigError(f"{base_path}: a base config cannot itself have a `base:` (one level only)")
    return merge_dicts(base, data)


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:  # safe_load: YAML tags such as !!python/object/apply are refused, never constructed
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to nested plain data (keys are checked later, against the schema)."""
    result = merge_dicts({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return result


def from_data(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from plain data, checking keys and types recursively.

    Args:
        cls: a dataclass type whose fields carry type annotations.
        data: a mapping (from YAML); missing keys take the field defaults.
        where: dotted location used in error messages.
    """
    return _convert(cls, data, where or cls.__name__)


def _convert(annotation: Any, value: Any, where: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return _convert_dataclass(annotation, value, where)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1
                          else f"{where}: {value!r} matches none of {_type_name(annotation)}")
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        return value
    if origin is tuple:
        return _convert_tuple(annotation, value, where)
    if origin in (list, Sequence):
        (item_type,) = get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, Mapping):
        key_type, value_type = get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_convert(key_type, k, f"{where}.{k}"): _convert(value_type, v, f"{where}.{k}")
                for k, v in value.items()}
    if annotation is float:
        if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r} in the config schema")


def _convert_tuple(annotation: Any, value: Any, where: str) -> tuple:
    args = get_args(annotation)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and len(args) == 2 and args[1] is Ellipsis:
        value = [value]  # `eval.scales=1.0` means a one-element series
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
    return tuple(_convert(arg, item, f"{where}[{i}]") for i, (arg, item) in enumerate(zip(args, value)))


def _convert_dataclass(cls: type, value: Any, where: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in value if key not in fields]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; valid keys are: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key {name!r} is missing")
    try:
        return cls(**kwargs)
    except FieldError as error:
        raise ConfigError(f"{where}.{error}") from None
    except (ValueError, TypeError) as error:
        # __post_init__ checks (e.g. ranges) explain themselves.
        raise ConfigError(f"{where}: {error}") from None


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def to_data(config: Any) -> Any:
    """Turn a config dataclass back into plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_data(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_data(item) for item in config]
    if isinstance(config, Mapping):
        return {key: to_data(item) for key, item in config.items()}
    return config


def to_yaml(config: Any) -> str:
    """The resolved config as YAML text, sections in schema order."""
    return yaml.safe_dump(to_data(config), sort_keys=False, default_flow_style=None, width=120)

