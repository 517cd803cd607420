"""YAML config loading shared by every command: overrides, validation, readable errors.

``load_config(path, Model, overrides=["train.lr=2e-5"])`` reads the YAML, applies ``--set``
overrides (values parsed as YAML scalars), and validates with the pydantic ``Model``. Errors name
the file, the dotted key, what is wrong and, for literals/enums, the allowed values.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from natscale.filemode import apply_umask

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and what to do."""


def apply_overrides(
    data: dict[str, Any], overrides: list[str], *, source: str = "--set"
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides in place (value parsed as YAML) and return ``data``."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source} {item!r}: expected KEY=VALUE, e.g. train.lr=2e-5")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} {item!r}: value is not valid YAML ({exc})") from exc
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):  # a list item by index: sources.0.paths=...
                node = node[_list_index(node, part, source, item)]
                continue
            child = node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"{source} {item!r}: {part!r} is not a section")
            node = child
        if isinstance(node, list):
            node[_list_index(node, parts[-1], source, item)] = value
        else:
            node[parts[-1]] = value
    return data


def _list_index(node: list, part: str, source: str, item: str) -> int:
    """``part`` as an index into the list ``node`` (``sources.0`` = the first source)."""
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"{source} {item!r}: {part!r} is not an index of that list (it has {len(node)} "
            f"item(s): 0..{len(node) - 1})"
        )
    return int(part)


def format_validation_error(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid config ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        lines.append(f"  - {key}: {msg}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    """Read, override and validate a YAML config into ``model``."""
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc


def save_config(config: BaseModel, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    apply_umask(tmp)  # mkstemp made it 0600
    os.replace(tmp, path)
