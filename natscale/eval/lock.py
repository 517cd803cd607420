"""One eval at a time in an output folder: rank 0 holds an exclusive ``flock`` on
``OUT/.natscale-eval.lock`` from before it reads the done episodes until the summary is written.

Two ``--resume`` runs of one output (a requeued job whose first run is still alive) each
appended the episodes missing at their start, so most episodes were written twice, and a
``prepare`` of ``episodes.jsonl`` trained on them twice. The second run now stops at once. The
kernel drops the lock when its holder dies, so a killed run never blocks the next one; the file
is deleted by the run that held it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
from collections.abc import Iterator
from pathlib import Path

from natscale.eval.errors import EvalError

LOCK = ".natscale-eval.lock"


def may_lock(out: Path) -> bool:
    """Whether ``out`` may get the lock file: a new or empty folder, or an eval's output (one
    holding ``run.json``). Any other folder is refused by the output checks, untouched."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    return (out / "run.json").is_file() or all(p.name == LOCK for p in out.iterdir())


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the eval lock of ``out`` (created, empty, when missing) while the block runs; raise
    :class:`EvalError` when another live eval holds it. A folder that cannot hold the file (read
    only, say) or a filesystem without locks is run unlocked: the output checks and the first
    write say what is wrong with it. A folder this made is removed again if left empty."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a")  # noqa: SIM115 (closed in the finally below)
    except OSError:
        yield
        return
    busy = False
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # busy; or no locks on this filesystem (ENOLCK, say): unlocked
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                busy = True
                raise EvalError(
                    f"output {out} is in use: another natscale eval is writing to it now (a "
                    "--resume of a job that is still running?); wait for it to end, or choose "
                    "another output directory"
                ) from None
        yield
    finally:
        if not busy:  # the holder's file (or, unlocked, this run's own)
            with contextlib.suppress(OSError):
                (out / LOCK).unlink()
        handle.close()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a refused new output leaves nothing behind
