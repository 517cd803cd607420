"""Saving matplotlib figures the way every natscale file is written: complete or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.atomic import atomic_path


def save_png(fig: Any, path: str | Path, *, dpi: int = 100, **metadata: str) -> Path:
    """Lay out ``fig`` and write it to ``path`` as a PNG through a temporary name (a reader never
    sees half a file); ``metadata`` becomes PNG text chunks."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata=metadata or None)
    return path
