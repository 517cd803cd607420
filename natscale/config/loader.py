"""YAML config loading shared by every command: overrides, validation, readable errors.

``load_config(path, Model, overrides=["train.lr=2e-5"])`` reads the YAML, applies ``--set``
overrides (values parsed as YAML scalars), and validates with the pydantic ``Model``. Errors name
the file, the dotted key, what is wrong and, for literals/enums, the allowed values.

The dotted-key helpers here (:func:`get_dotted`, :func:`set_dotted`, :func:`parse_override`,
:func:`apply_overrides`) are the one implementation every ``KEY=VALUE`` override and nested
lookup in natscale uses (run configs, DeepSpeed configs, benchmark specs, data fields).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from natscale.atomic import atomic_write_text

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and what to do."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, but ``5e8`` and ``2e-5`` are numbers (YAML 1.2, JSON): the
    1.1 float needs a dot, so ``reduce_bucket_size: 5e8`` would reach DeepSpeed as a string. A key
    given twice in one mapping is an error (PyYAML keeps the last: a second ``pack:`` section
    silently replaced the first, defaults and all)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            seen[key] = key_node.start_mark.line
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key!r} is given twice (first on line {first + 1}): YAML would keep only "
                    "the last; merge the two into one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML (safe: plain data only), exponent-only numbers as floats."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


def get_dotted(data: Mapping[str, Any], key: str | None) -> Any:
    """``data["a"]["b"]`` for ``key="a.b"``; None when ``key`` is empty or any part is missing."""
    if not key:
        return None
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``key="a.b"``, creating missing sections; ConfigError when
    a part on the way holds a value rather than a section. A part that meets a list is an index
    into it (``sources.0.paths`` = the first source's paths)."""
    *parents, last = key.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list):
            node = node[_list_index(node, part)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"{part!r} is not a section")
        node = child
    if isinstance(node, list):
        node[_list_index(node, last)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str) -> int:
    """``part`` as an index into the list ``node``; ConfigError when it is not one."""
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"{part!r} is not an index of that list (it has {len(node)} item(s): "
            f"0..{len(node) - 1})"
        )
    return int(part)


def parse_override(item: str, *, source: str = "--set") -> tuple[str, Any]:
    """``(key, value)`` of a ``KEY=VALUE`` override; the value is parsed as YAML (empty: "")."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{source} {item!r}: expected KEY=VALUE, e.g. train.lr=2e-5")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} {item!r}: value is not valid YAML ({exc})") from exc
    return key, value


def apply_overrides(
    data: dict[str, Any], overrides: list[str], *, source: str = "--set"
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides in place (value parsed as YAML) and return ``data``."""
    for item in overrides:
        key, value = parse_override(item, source=source)
        try:
            set_dotted(data, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{source} {item!r}: {exc}") from None
    return data


def _key_path(loc: tuple, data: Any) -> str:
    """``loc`` as the dotted key a user wrote: without the tag pydantic adds for a tagged union
    (``sources.0.nat.bogus`` is ``sources.0.bogus``: "nat" is that source's ``format``)."""
    parts, node = [], data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part not in node and not last and part in node.values():
            continue  # the union's tag, not a key of the config
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        else:
            node = None
    return ".".join(parts) or "(top level)"


def format_validation_error(
    exc: ValidationError, where: str, overridden: set[str] = frozenset(), data: Any = None
) -> str:
    """One line per problem, naming its key; a key given by ``--set`` (``overridden``) says so.

    ``data``, the validated input, lets a key inside a tagged union be named as it was written."""
    lines = [f"{where}: invalid config ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        key = _key_path(err["loc"], data)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        inside = sorted(k for k in overridden if err["loc"] and k.startswith(key + "."))
        if any(key == k or key.startswith(k + ".") for k in overridden):
            msg += " (the value given with --set)"
            if err["type"] == "string_type" and isinstance(err.get("input"), (dict, list)):
                kind = "a mapping" if isinstance(err["input"], dict) else "a list"
                msg += (
                    f"; --set read it as YAML, which made it {kind}: quote the text, e.g. "
                    f"--set '{key}=\"...\"'"
                )
        elif inside:  # a check of the whole section, which a --set value is part of
            msg += f" (with {', '.join(inside)} given with --set)"
        lines.append(f"  - {key}: {msg}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def load_config(path: str | os.PathLike, model: type[M], overrides: list[str] | None = None) -> M:
    """Read, override and validate a YAML config into ``model``. A section left empty (every
    key under it commented out: YAML reads it as null) holds its defaults."""
    data = read_yaml(path)
    for key, value in list(data.items()):
        field = model.model_fields.get(key)
        annotation = field.annotation if field is not None else None
        if value is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            data[key] = {}
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        keys = {parse_override(item)[0] for item in overrides or []}
        raise ConfigError(format_validation_error(exc, str(path), keys, data)) from exc


def save_config(config: BaseModel, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
