"""Saving matplotlib figures the way every natscale file is written: complete or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.atomic import atomic_path

PNG_KEY = "natscale"  # a PNG text chunk ({"natscale": WRITER}) that says which command wrote it


def replaceable(path: Path, writer: str) -> bool:
    """Whether writing ``path`` loses nothing of the user's: it does not exist, or it is a
    PNG file (not a link) whose text chunk says ``writer`` wrote it (:func:`save_png`)."""
    from PIL import Image

    if not path.exists() and not path.is_symlink():
        return True
    try:
        with Image.open(path) as image:
            ours = getattr(image, "text", {}).get(PNG_KEY) == writer
    except OSError:  # not an image, a folder, unreadable
        ours = False
    return ours and path.is_file() and not path.is_symlink()


def save_png(fig: Any, path: str | Path, *, dpi: int = 100, **metadata: str) -> Path:
    """Lay out ``fig`` and write it to ``path`` as a PNG through a temporary name (a reader never
    sees half a file); ``metadata`` becomes PNG text chunks."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata=metadata or None)
    return path
