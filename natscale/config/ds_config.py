"""DeepSpeed JSON configs: load one, fill its ``"auto"`` values from the run.

The named setups ship with the package (``natscale/ds_configs/*.json``, package data) and are
named ``ds_configs/NAME.json`` in run configs, which resolves from a checkout and from an
installed wheel alike; a file of that path in the current directory wins.

The run config owns batch sizes, optimizer hyper-parameters, clipping and precision; a ds_config
says ``"auto"`` for them (or leaves them out) and :func:`fill_ds_config` writes them in. An explicit
value that disagrees with the run config is an error rather than a silent override. The LR
schedule is the trainer's (a client scheduler), so a ds_config may not carry a ``scheduler``.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from natscale.config.loader import ConfigError, get_dotted, set_dotted
from natscale.config.run import RunConfig

AUTO = "auto"
#: the folder name that run configs use for the shipped configs: ``ds_configs/zero3_bf16.json``
SHIPPED_PREFIX = "ds_configs"


def shipped_ds_configs() -> dict[str, Path]:
    """The DeepSpeed configs shipped with natscale: ``{"zero3_bf16.json": path, ...}``."""
    folder = importlib.resources.files("natscale") / SHIPPED_PREFIX
    if not folder.is_dir():
        return {}
    return {
        f.name: Path(str(f))
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".json")
    }


def resolve_ds_config_path(name: str | os.PathLike) -> Path:
    """A ds_config path as given (relative to the current directory), else, for
    ``ds_configs/NAME.json``, the config of that name shipped with natscale."""
    path = Path(name)
    if path.is_file() or path.is_absolute() or path.parent != Path(SHIPPED_PREFIX):
        return path
    return shipped_ds_configs().get(path.name, path)


def load_ds_config(name: str | os.PathLike) -> dict[str, Any]:
    path = resolve_ds_config_path(name)
    if not path.is_file():
        shipped = ", ".join(f"{SHIPPED_PREFIX}/{n}" for n in shipped_ds_configs())
        raise ConfigError(
            f"deepspeed.config: {name} not found (looked in the current directory and among "
            f"the configs shipped with natscale); pick a JSON file or one of: {shipped}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # as the run-config loader says it
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``extra`` (new dict; dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_owned_values(run: RunConfig, world_size: int) -> dict[str, Any]:
    """Dotted ds_config keys whose value the run config decides."""
    t = run.train
    micro = run.data.micro_batch_rows
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": micro * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "bf16.enabled": t.precision == "bf16",
        "optimizer.params.lr": t.lr,
        "optimizer.params.betas": list(t.adam_betas),
        "optimizer.params.eps": t.adam_eps,
        "optimizer.params.weight_decay": t.weight_decay,
    }


def size_defaults(hidden_size: int) -> dict[str, Any]:
    """Values for ZeRO-3 bucket keys left "auto" (the Hugging Face integration's rule of thumb)."""
    return {
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }


def fill_ds_config(
    ds: dict[str, Any], run: RunConfig, *, world_size: int, hidden_size: int
) -> dict[str, Any]:
    """Return a copy of ``ds`` (already merged with ``deepspeed.overrides``) with "auto" resolved."""
    ds = copy.deepcopy(ds)
    where = f"deepspeed.config {run.deepspeed.config}"
    if "scheduler" in ds:
        raise ConfigError(
            f"{where}: remove its 'scheduler' block; the LR schedule is set by train.lr_schedule, "
            "train.warmup_steps and train.min_lr_ratio"
        )
    if get_dotted(ds, "fp16.enabled") not in (None, False):
        raise ConfigError(f"{where}: fp16 is not supported; use train.precision: bf16 or fp32")
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    for key, value in run_owned_values(run, world_size).items():
        current = get_dotted(ds, key)
        if current is not None and current != AUTO and current != value:
            raise ConfigError(
                f"{where}: {key} is {current!r} but the run config says {value!r}; "
                f'set it to "auto" (the run config owns it)'
            )
        set_dotted(ds, key, value)
    for key, value in size_defaults(hidden_size).items():
        if get_dotted(ds, key) == AUTO:
            set_dotted(ds, key, value)
    ds.setdefault("steps_per_print", 10**9)  # our own metrics replace DeepSpeed's step prints
    leftover = sorted(_auto_keys(ds))
    if leftover:
        raise ConfigError(f"{where}: no rule to fill 'auto' at {leftover}; give a value instead")
    return ds


def resolve_ds_config(run: RunConfig, *, world_size: int, hidden_size: int) -> dict[str, Any]:
    """The run's ds_config JSON merged with ``deepspeed.overrides`` and its "auto" values filled."""
    ds = deep_merge(load_ds_config(run.deepspeed.config), run.deepspeed.overrides)
    return fill_ds_config(ds, run, world_size=world_size, hidden_size=hidden_size)


def check_with_deepspeed(ds: dict[str, Any], where: str) -> None:
    """Validate a filled config with DeepSpeed's own config class (world size 1 outside a job)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(copy.deepcopy(ds))
    except Exception as exc:
        raise ConfigError(f"{where}: DeepSpeed rejects the config: {exc}") from exc


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        keys = []
        for key, value in node.items():
            keys += _auto_keys(value, f"{prefix}{key}.")
        return keys
    return [prefix.rstrip(".")] if node == AUTO else []
