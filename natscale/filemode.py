"""Give files written through a temporary path the permissions the user's umask asks for.

``tempfile.mkstemp`` creates files 0600, ``tempfile.mkdtemp`` folders 0700, and the safetensors
writer (behind ``save_pretrained``) its files 0600; after the rename they would stay unreadable to
the rest of a team on a shared cluster. ``open()`` and ``mkdir()`` already apply the umask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting and restoring it (which briefly
    changes it for every thread of the process)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """chmod ``path`` to what a plain create would give: 0666 (files) or 0777 (folders) & ~umask."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def apply_umask_tree(root: str | os.PathLike) -> None:
    """:func:`apply_umask` on ``root`` and everything below it (links are left alone)."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                apply_umask(path)
    apply_umask(root)
