"""An output directory that appears complete or not at all.

Files go to a hidden sibling ``.<name>.partial-<pid>`` (same filesystem, so the final ``rename`` is
atomic); on any exception, KeyboardInterrupt included, the partial folder is removed. A process
killed with SIGKILL cannot clean up: its partial folder is removed by the next run that writes to
the same place (once its pid is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out_dir: Path) -> None:
    """Delete partial folders for ``out_dir`` left by runs that were killed."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{out_dir.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def check_destination(
    out_dir: Path,
    overwrite: bool,
    *,
    error: type[Exception] = FileExistsError,
    hint: str = "choose another output or pass --overwrite",
) -> None:
    """Fail early (before any work) if ``out_dir`` exists and may not be replaced.

    ``error`` is the exception type raised (callers use their own error class); ``hint`` says
    what to do. An existing empty directory may always be filled.
    """
    if out_dir.exists() and not overwrite:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            return
        raise error(f"{out_dir} already exists; {hint}")
    if out_dir.exists() and not out_dir.is_dir():
        raise error(f"{out_dir} exists and is not a directory")


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    error: type[Exception] = FileExistsError,
    hint: str = "choose another output or pass --overwrite",
) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``out_dir`` (replacing it if allowed)."""
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite, error=error, hint=hint)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
