"""Ending a command cleanly on Ctrl-C or SIGTERM (what a SLURM time limit or ``kill`` sends).

:func:`run_interruptible` turns SIGTERM into an exception, so the partial output of an atomic
write is removed on the way out as on Ctrl-C (``natscale.atomic``), and either ends with one line
instead of a traceback: exit 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, so that ``except Exception`` does not swallow it)."""


def _raise_terminated(signum, frame):
    raise Terminated


def run_interruptible(name: str, work: Callable[[], int], *, what: str = "nothing written") -> int:
    """``work()``'s exit code; on Ctrl-C or SIGTERM, ``NAME: interrupted, WHAT`` on stderr and
    130 or 143. SIGTERM is handled only in the main thread (where Python delivers signals)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        return work()
    except KeyboardInterrupt:
        print(f"{name}: interrupted, {what}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: stopped by SIGTERM, {what}", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
