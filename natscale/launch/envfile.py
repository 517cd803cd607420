"""The variables every node needs, and DeepSpeed's ``.deepspeed_env`` file that carries them.

DeepSpeed's multi-node runners (pdsh, openmpi, slurm) read ``~/.deepspeed_env`` and then
``./.deepspeed_env`` (name overridable with ``DS_ENV_FILE``) on the launching node, one
``KEY=VALUE`` per line, and export every line to every rank (``export K=V;`` over ssh, ``mpirun
-x K=V``, ``srun --export=ALL,K=V``). The file has no comment syntax (every line must hold ``=``),
so natscale marks the files it writes with one extra variable, ``NATSCALE_ENV_FILE=<hash of the
other lines>[:KEY,KEY...[:SAVED]]``: a file whose hash still matches is regenerated on the next
launch, keeping the variables the mark names (the ones a user's file brought in, so they survive
every later launch) with the user's own values: where ``--env`` / ``--ifname`` replaced one for
that launch, SAVED (base64 of a JSON object) holds the user's value, so the override does not
outlive its launch. A file without the mark, or edited by hand since, is merged in (its values
beat the ones copied from this node, and ``--env`` / ``--ifname`` beat it).

DeepSpeed also reads ``~/.deepspeed_env`` for every job of the user, wherever it starts, so
natscale refuses to write that one (:func:`check_env_file_location`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sys
import tempfile
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
    user_values: dict[str, str] = field(default_factory=dict)  # that file's own values

    def set(self, key: str, value: str, source: str) -> None:
        self.values[key] = value
        self.source[key] = source

    def lines(self) -> list[str]:
        return [f"{k}={self.values[k]}" for k in sorted(self.values)]


def env_file_path(environ: Mapping[str, str], cwd: Path) -> Path:
    """Where DeepSpeed looks last (so its values win): ``./$DS_ENV_FILE`` or ``./.deepspeed_env``."""
    return cwd / environ.get("DS_ENV_FILE", ".deepspeed_env")


def check_env_file_location(path: Path, environ: Mapping[str, str]) -> None:
    """ValueError if ``path`` is the home directory's env file: DeepSpeed reads
    ``~/.deepspeed_env`` for every job the user launches, from any folder, so what natscale writes
    for this launch (its master address and port, its PATH) would reach all of them; or if it is
    a link (to a file shared with other folders, say), which writing it would replace."""
    home = environ.get("HOME") or os.path.expanduser("~")
    home_file = Path(home) / path.name
    if path.resolve() == home_file.resolve():
        raise ValueError(
            f"{path} is the env file in your home directory, which DeepSpeed applies to every job "
            "you launch, from any folder; natscale writes this launch's variables there. Launch "
            "from a project folder (cd into it, e.g. the one holding the run config) instead"
        )
    if path.is_symlink():
        target = os.readlink(path)
        raise ValueError(
            f"{path} is a link to {target}: natscale writes this launch's variables into "
            f"{path.name}, which would replace your link (or, written through it, change "
            f"{target} for whoever else reads it); put a copy in its place (cp "
            f"--remove-destination {target} {path}) or pass the variables with --env"
        )


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
        digest, _, rest = mark.partition(":")
        names, _, saved = rest.partition(":")
        keys = [k for k in names.split(",") if k]
        if digest == _digest(values, keys, saved):
            # ours, unedited: regenerate it, keeping what a user's file brought in earlier, with
            # the user's values (not those --env / --ifname replaced them with for one launch)
            own = _decode_saved(saved, path)
            return {k: own.get(k, values[k]) for k in keys if k in values}
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
    spec.user_values = dict(user_file)
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
    return spec


def check_file_values(spec: EnvSpec, path: Path) -> None:
    """ValueError naming the first variable whose value cannot be a line of the env file at
    ``path`` (a line break would split it). Only launches that write the file need this: no-ssh
    and single-node launches set the variables on the ``deepspeed`` process directly."""
    for key, value in spec.values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(
                f"{key}: a value with a line break cannot go into {path} (DeepSpeed reads one "
                f"KEY=VALUE per line); it came from {spec.source.get(key, '?')}: change it, or "
                "unset it for the launch"
            )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _digest(values: Mapping[str, str], user_keys: Sequence[str] = (), saved: str = "") -> str:
    text = "\n".join(f"{k}={values[k]}" for k in sorted(values))
    if user_keys:
        text += "\n" + ",".join(user_keys)
    if saved:
        text += "\n" + saved
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _encode_saved(own: Mapping[str, str]) -> str:
    """The user's values the file does not hold, as unpadded URL-safe base64 of JSON: no ``,``
    or ``:`` (the mark's separators) and nothing DeepSpeed would quote."""
    if not own:
        return ""
    raw = json.dumps(dict(own), sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_saved(saved: str, path: Path) -> dict[str, str]:
    if not saved:
        return {}
    try:
        own = json.loads(base64.urlsafe_b64decode(saved + "=" * (-len(saved) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(
            f"{path}: the {MARK} line is damaged ({exc}); delete the file (natscale writes it "
            "again) and put your own variables back in it, or pass them with --env"
        ) from exc
    if not isinstance(own, dict) or not all(isinstance(v, str) for v in own.values()):
        raise ValueError(
            f"{path}: the {MARK} line is damaged (saved values are not an object of strings); "
            "delete the file and put your own variables back in it, or pass them with --env"
        )
    return own


def _mark(spec: EnvSpec) -> str:
    keys = [k for k in spec.user_keys if k in spec.values]
    own = {
        k: spec.user_values[k]
        for k in keys
        if k in spec.user_values and spec.user_values[k] != spec.values[k]
    }
    saved = _encode_saved(own)
    digest = _digest(spec.values, keys, saved)
    if not keys:
        return digest
    return f"{digest}:{','.join(keys)}" + (f":{saved}" if saved else "")


def env_file_text(spec: EnvSpec) -> str:
    """The file natscale writes: sorted ``KEY=VALUE`` lines, then the ``NATSCALE_ENV_FILE`` mark
    (naming the variables of a user's file, which later launches keep, and the user's values of
    those this launch replaced)."""
    return "".join(f"{line}\n" for line in spec.lines()) + f"{MARK}={_mark(spec)}\n"


def write_env_file(path: Path, spec: EnvSpec) -> None:
    """Write atomically (a temp file in the same directory, then rename)."""
    check_file_values(spec, path)
    atomic_write_text(path, env_file_text(spec))


def write_launch_env_file(directory: Path, name: str, text: str) -> Path:
    """A new file ``NAME.launch-XXXXXXXX`` in ``directory`` holding ``text``, private to one launch
    (created exclusively, readable by the user only); the caller removes it when the launch ends."""
    fd, path = tempfile.mkstemp(prefix=f"{name}.launch-", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)
