"""First-use builds of native ops: say what is being built before the silent minute, build ahead.

Two ops are compiled on a machine's first training run unless they are in the JIT cache
(``$TORCH_EXTENSIONS_DIR``): natscale's segment loss (:mod:`natscale.ops.builder`) and
DeepSpeed's shared-memory all-reduce (``deepspeed_shm_comm``, loaded by every
``deepspeed.init_distributed`` on the CPU accelerator). Each takes 1-3 minutes on 2 cores
and prints nothing while it compiles; :func:`announce_build` prints one line to stderr first
(once per node: ``LOCAL_RANK`` 0), and :func:`build_ahead` (``natscale env --build-ops``, run by
``make install``) compiles both into the cache so later runs start at once.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# measured on 2 shared cores: 50-130 s each, ~3 min under a load of 11; stated in the notice
TYPICAL = "usually 1-3 minutes on 2 cores, longer on a busy machine"
SHM_OP = "deepspeed_shm_comm"


def extensions_root() -> Path:
    """torch's JIT build root: ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions/pyXY_cpu``."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    accelerator = (
        "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
    )
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(get_default_build_root()) / f"{version}_{accelerator}"


def use_natscale_ninja() -> str | None:
    """Put the ninja that natscale installs (the ``ninja`` wheel, >= 1.13) first on ``PATH``, for
    this process and the processes it starts; the directory added, or None if nothing changed.

    torch and DeepSpeed run whichever ``ninja`` is first on ``PATH``. A system ninja (1.11 on
    Ubuntu 24.04) and the wheel's write ``.ninja_log`` hashes that the other does not recognise, so
    each rebuilds every object the other built: a silent minute per op whenever an activated
    virtualenv (or a launcher that puts it on ``PATH``) and a plain ``.venv/bin/natscale``
    alternate on one JIT cache. With the wheel's ninja pinned, every natscale process agrees.
    """
    try:
        import ninja
    except ImportError:
        return None
    bin_dir = str(getattr(ninja, "BIN_DIR", ""))
    binary = Path(bin_dir, "ninja")
    if not bin_dir or not binary.is_file():
        return None
    found = shutil.which("ninja")
    if found is not None and Path(found).resolve() == binary.resolve():
        return None
    os.environ["PATH"] = os.pathsep.join(p for p in (bin_dir, os.environ.get("PATH", "")) if p)
    return bin_dir


def needs_build(build_dir: Path, name: str, inputs: Iterable[str | Path]) -> bool:
    """Whether a JIT load of ``name`` will compile: no ``name.so`` in ``build_dir``, or a source
    or header newer than it (ninja's own rule; a flag change, or another ninja version, is not
    seen here: see :func:`use_natscale_ninja`)."""
    built = build_dir / f"{name}.so"
    try:
        stamp = built.stat().st_mtime
    except FileNotFoundError:
        return True
    return any(Path(p).stat().st_mtime > stamp for p in inputs if Path(p).is_file())


def announce_build(what: str, name: str, build_dir: Path) -> bool:
    """Print the one-line notice before a build (on ``LOCAL_RANK`` 0 only); True if printed."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    rank = os.environ.get("RANK")
    prefix = (
        f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    )
    print(
        f"{prefix}natscale: building {what} ({name}) into {build_dir}: first use with this "
        f"cache, {TYPICAL}, without output; later runs reuse it "
        "(`natscale env --build-ops` or `make install` builds it ahead)",
        file=sys.stderr,
        flush=True,
    )
    return True


def announce_done(name: str, seconds: float) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"natscale: built {name} in {seconds:.0f} s", file=sys.stderr, flush=True)


# ---- DeepSpeed's shm all-reduce op ------------------------------------------------------------
def _shm_builder() -> Any | None:
    """DeepSpeed's ShareMemCommBuilder where this platform can build it, else None."""
    if sys.platform != "linux":
        return None
    try:
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
    except ImportError:
        return None
    return ShareMemCommBuilder()


def shm_op_inputs(builder: Any) -> list[Path]:
    """The op's sources and headers (what ninja compares with the built library)."""
    files = [Path(builder.deepspeed_src_path(p)) for p in builder.sources()]
    for inc in builder.include_paths():
        folder = Path(builder.deepspeed_src_path(inc))
        files += sorted(folder.glob("*.h")) if folder.is_dir() else []
    return files


def _shm_op_prebuilt() -> bool:
    """Whether the op is compiled into the DeepSpeed install (``DS_BUILD_SHM_COMM=1``)."""
    try:
        from deepspeed.git_version_info import installed_ops
    except ImportError:
        return False
    return bool(installed_ops.get(SHM_OP, False))


def shm_op_needs_build() -> bool:
    """Whether DeepSpeed's next CPU ``init_distributed`` will compile its shm op (never builds)."""
    builder = _shm_builder()
    if builder is None:
        return False
    if _shm_op_prebuilt():
        return False
    return needs_build(extensions_root() / SHM_OP, SHM_OP, shm_op_inputs(builder))


def announce_shm_op_build() -> bool:
    """Call before ``deepspeed.init_distributed`` on the CPU accelerator: the notice, if needed."""
    if not shm_op_needs_build():
        return False
    return announce_build(
        "DeepSpeed's shared-memory all-reduce op", SHM_OP, extensions_root() / SHM_OP
    )


def load_shm_op() -> None:
    """Build or load DeepSpeed's shm op under natscale's build lock (:func:`natscale.ops.builder.
    build_lock`), ahead of ``deepspeed.init_distributed``, which then finds it built.

    torch guards the build with a ``lock`` file that only the builder removes; a first run
    stopped during its silent build (Ctrl-C, a timeout) left it, and every later run on the CPU
    accelerator waited on it in ``init_distributed`` for ever, printing nothing. Under the lock
    natscale holds, a ``lock`` file is known to be a dead build's, and is removed. Called before
    any rendezvous: local ranks wait here for each other's build, never for a peer's init."""
    builder = _shm_builder()
    if builder is None or not builder.is_compatible() or _shm_op_prebuilt():
        return
    from natscale.ops.builder import build_lock

    build_dir = extensions_root() / SHM_OP
    build_dir.mkdir(parents=True, exist_ok=True)
    use_natscale_ninja()
    with build_lock(build_dir):
        builder.jit_load(verbose=False)


def build_shm_op() -> str:
    """Compile (or find) DeepSpeed's shm op in the JIT cache; a one-line result."""
    builder = _shm_builder()
    if builder is None:
        return f"{SHM_OP}: not built (not a Linux machine or DeepSpeed missing)"
    if not builder.is_compatible():
        return f"{SHM_OP}: not buildable here ({builder.error_log or 'incompatible'})"
    if not shm_op_needs_build():
        return f"{SHM_OP}: already built ({extensions_root() / SHM_OP})"
    announce_build("DeepSpeed's shared-memory all-reduce op", SHM_OP, extensions_root() / SHM_OP)
    start = time.perf_counter()
    load_shm_op()
    seconds = time.perf_counter() - start
    announce_done(SHM_OP, seconds)
    return f"{SHM_OP}: built in {seconds:.0f} s ({extensions_root() / SHM_OP})"


def build_ahead() -> list[str]:
    """Build every op a training run on this machine would JIT-compile; one line per op.

    natscale's CPU segment loss, the CUDA one where torch sees a GPU and can build it, and
    DeepSpeed's shm op (used whenever DeepSpeed runs on the CPU accelerator, as the demo does).
    A failed build is reported, not raised: training then falls back (segment loss) or
    compiles at first use.
    """
    import torch

    from natscale.ops.builder import SEGMENT_CE_CPU, SEGMENT_CE_CUDA

    lines = []
    builders = [SEGMENT_CE_CPU]
    if torch.cuda.is_available() and SEGMENT_CE_CUDA.compatible()[0]:
        builders.append(SEGMENT_CE_CUDA)
    for b in builders:
        ok, reason = b.compatible()
        if b.prebuilt() is None and not ok:
            lines.append(f"{b.name}: not buildable here ({reason})")
            continue
        start = time.perf_counter()
        try:
            b.load()
        except RuntimeError as exc:
            lines.append(f"{b.name}: build failed: {exc}")
            continue
        lines.append(
            f"{b.name}: ready in {time.perf_counter() - start:.0f} s ({b.status()['reason']})"
        )
    try:
        lines.append(build_shm_op())
    except Exception as exc:  # a compiler error: report it, training would JIT-retry
        lines.append(f"{SHM_OP}: build failed: {type(exc).__name__}: {str(exc)[:300]}")
    return lines
