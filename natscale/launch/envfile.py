"""The variables every node needs, and DeepSpeed's ``.deepspeed_env`` file that carries them.

DeepSpeed's multi-node runners (pdsh, openmpi, slurm) read ``~/.deepspeed_env`` and then
``./.deepspeed_env`` (name overridable with ``DS_ENV_FILE``) on the launching node, one
``KEY=VALUE`` per line, and export every line to every rank (``export K=V;`` over ssh, ``mpirun
-x K=V``, ``srun --export=ALL,K=V``). The file has no comment syntax (every line must hold ``=``),
so natscale marks the files it writes with one extra variable, ``NATSCALE_ENV_FILE=<hash of the
other lines>[:KEY,KEY...]``: a file whose hash still matches is regenerated on the next launch,
keeping the variables the mark names (the ones a user's file brought in, so they survive every
later launch); a file without the mark, or edited by hand since, is merged in (its values beat the
ones copied from this node, and ``--env`` / ``--ifname`` beat it).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import natscale
from natscale.atomic import atomic_write_text

MARK = "NATSCALE_ENV_FILE"
# copied from the launching node when set: communication, caches/offline mode, DeepSpeed's
# accelerator choice and op cache, threads, natscale's own knobs (hang guard, ...)
COPY_PREFIXES = ("NCCL_", "GLOO_", "HF_", "TORCH_", "TRANSFORMERS_", "NATSCALE_")
COPY_NAMES = (
    "DS_ACCELERATOR",
    "OMP_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "CUDA_HOME",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class EnvSpec:
    """The variables for every rank, and where each came from (for the dry run)."""

    values: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    user_keys: list[str] = field(default_factory=list)  # from an existing (user's) env file

    def set(self, key: str, value: str, source: str) -> None:
        self.values[key] = value
        self.source[key] = source

    def lines(self) -> list[str]:
        return [f"{k}={self.values[k]}" for k in sorted(self.values)]


def env_file_path(environ: Mapping[str, str], cwd: Path) -> Path:
    """Where DeepSpeed looks last (so its values win): ``./$DS_ENV_FILE`` or ``./.deepspeed_env``."""
    return cwd / environ.get("DS_ENV_FILE", ".deepspeed_env")


def parse_env_lines(text: str, where: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as DeepSpeed reads them (ValueError naming the line otherwise)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        key, sep, value = line.partition("=")
        if not sep or not _KEY.match(key.strip()):
            raise ValueError(
                f"{where}:{number}: {line!r} is not KEY=VALUE (DeepSpeed's launcher would fail "
                "on it: the file allows no comments or blank lines)"
            )
        values[key.strip()] = value.strip()
    return values


def read_user_env_file(path: Path) -> dict[str, str]:
    """An existing env file's variables, or {} if absent or written (and untouched) by natscale."""
    if not path.is_file():
        return {}
    values = parse_env_lines(path.read_text(encoding="utf-8"), str(path))
    mark = values.pop(MARK, None)
    if mark is not None:
        digest, _, names = mark.partition(":")
        keys = [k for k in names.split(",") if k]
        if digest == _digest(values, keys):
            # ours, unedited: regenerate it, keeping what a user's file brought in earlier
            return {k: values[k] for k in keys if k in values}
    return values


def python_bin() -> str:
    """The directory of this Python: the venv (or conda env) every node must have at the same path."""
    return str(Path(sys.executable).parent)


def source_root() -> str:
    """The directory holding the ``natscale`` package that is running (put on PYTHONPATH)."""
    return str(Path(natscale.__file__).resolve().parents[1])


def build_env(
    environ: Mapping[str, str],
    *,
    user_file: Mapping[str, str],
    ifname: str | None,
    explicit: list[str],
    master_addr: str,
    master_port: int,
) -> EnvSpec:
    """Collect the variables for every rank (see the module docstring for the precedence).

    explicit: ``--env`` items, ``KEY=VALUE`` or ``KEY`` (copy this node's value). Raises
    ValueError for a malformed item or one that contradicts the master address or port.
    """
    spec = EnvSpec()
    for key in sorted(environ):
        if (key.startswith(COPY_PREFIXES) or key in COPY_NAMES) and key != MARK:
            spec.set(key, environ[key], "this node")
    path = [python_bin()] + [p for p in environ.get("PATH", "").split(os.pathsep) if p]
    spec.set("PATH", os.pathsep.join(_unique(path)), "this node, Python's directory first")
    pythonpath = [source_root()] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    spec.set("PYTHONPATH", os.pathsep.join(_unique(pythonpath)), "natscale's source first")
    for key, value in user_file.items():
        spec.set(key, value, "existing env file")
    spec.user_keys = sorted(user_file)
    if ifname:
        spec.set("GLOO_SOCKET_IFNAME", ifname, "--ifname")
        spec.set("NCCL_SOCKET_IFNAME", ifname, "--ifname")
    for item in explicit:
        key, sep, value = item.partition("=")
        if not _KEY.match(key):
            raise ValueError(f"--env {item!r}: expected KEY=VALUE or KEY (a variable name)")
        if not sep:
            if key not in environ:
                raise ValueError(f"--env {key}: not set on this node; give --env {key}=VALUE")
            value = environ[key]
        spec.set(key, value, "--env")
    for key, value in (("MASTER_ADDR", master_addr), ("MASTER_PORT", str(master_port))):
        if spec.source.get(key) == "--env" and spec.values[key] != value:
            raise ValueError(
                f"--env {key}={spec.values[key]} contradicts the launch's {value}; "
                f"use --{key.lower().replace('_', '-')} instead"
            )
        # openmpi / slurm ranks read these (natscale.train.dist); pdsh ranks get them anyway
        spec.set(key, value, "master")
    for key, value in spec.values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key}: a value with a line break cannot go into .deepspeed_env")
    return spec


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _digest(values: Mapping[str, str], user_keys: Sequence[str] = ()) -> str:
    text = "\n".join(f"{k}={values[k]}" for k in sorted(values))
    if user_keys:
        text += "\n" + ",".join(user_keys)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _mark(spec: EnvSpec) -> str:
    keys = [k for k in spec.user_keys if k in spec.values]
    digest = _digest(spec.values, keys)
    return f"{digest}:{','.join(keys)}" if keys else digest


def env_file_text(spec: EnvSpec) -> str:
    """The file natscale writes: sorted ``KEY=VALUE`` lines, then the ``NATSCALE_ENV_FILE`` mark
    (naming the variables of a user's file, which later launches keep)."""
    return "".join(f"{line}\n" for line in spec.lines()) + f"{MARK}={_mark(spec)}\n"


def write_env_file(path: Path, spec: EnvSpec) -> None:
    """Write atomically (a temp file in the same directory, then rename)."""
    atomic_write_text(path, env_file_text(spec))
