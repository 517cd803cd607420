"""Packed rows written window by window as the shards of one ``datasets`` folder.

Each window's rows go to disk as soon as they are packed (``Dataset.save_to_disk`` of that
window into a hidden sub-folder, one Arrow file), so a prepare holds one window of rows at a
time. :meth:`ShardWriter.finish` then lays the files out exactly as ``save_to_disk(...,
num_shards=N)`` does (``data-00000-of-0000N.arrow`` ... plus one ``state.json`` listing them
and one ``dataset_info.json``), so ``datasets.load_from_disk`` reads them as one dataset, row
``r`` of shard ``k`` following the last row of shard ``k - 1``.

:func:`join_shards` lays out the same way the Arrow files of several such folders (``natscale
merge``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from natscale.data.packing import PackedColumns

PENDING = ".shards"  # the sub-folder of windows written so far (inside the temporary output)


def shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


class ShardWriter:
    """Write packed rows window by window into ``root`` (a temporary output folder)."""

    def __init__(self, root: str | os.PathLike, *, progress: bool = False) -> None:
        self.root = Path(root)
        self.progress = progress
        self.rows: list[int] = []  # rows per shard

    def add(self, rows: PackedColumns) -> None:
        """Write one window's rows as the next shard."""
        import datasets

        from natscale.data.output import rows_to_dataset

        part = self.root / PENDING / f"{len(self.rows):05d}"
        bars_on = datasets.is_progress_bar_enabled()
        if not self.progress:
            datasets.disable_progress_bars()
        try:
            rows_to_dataset(rows).save_to_disk(str(part), num_shards=1)
        finally:
            if bars_on:
                datasets.enable_progress_bars()
        self.rows.append(len(rows))

    def finish(self) -> list[str]:
        """Move the shards into place with one ``state.json`` and ``dataset_info.json``;
        returns the file names in row order."""
        if not self.rows:
            raise ValueError("no shard was written")
        pending = self.root / PENDING
        parts = [pending / f"{k:05d}" for k in range(len(self.rows))]
        names = join_shards(parts, self.root, place=os.replace)
        shutil.rmtree(pending)
        return names


def data_files(folder: Path) -> list[str]:
    """The Arrow files of the ``datasets`` folder ``folder``, in row order (its state.json)."""
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return [f["filename"] for f in state["_data_files"]]


def join_shards(
    folders: Sequence[Path], out: Path, *, place: Callable[[Path, Path], Any]
) -> list[str]:
    """Lay the Arrow files of the ``datasets`` folders ``folders`` (in order) into ``out`` as one
    dataset, each put there by ``place(src, dst)`` (a rename, link or copy). Every folder must
    have the same features. Returns the file names in row order."""
    files = [(folder, name) for folder in folders for name in data_files(folder)]
    first = folders[0]
    info = json.loads((first / "dataset_info.json").read_text(encoding="utf-8"))
    for folder in folders[1:]:
        other = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
        if other.get("features") != info.get("features"):
            raise ValueError(
                f"{folder}: its columns {other.get('features')} differ from those of {first} "
                "(prepared by different natscale versions? prepare the older one again)"
            )
    state = json.loads((first / "state.json").read_text(encoding="utf-8"))
    names = [shard_name(k, len(files)) for k in range(len(files))]
    for (folder, name), new in zip(files, names, strict=True):
        place(folder / name, out / new)
    state["_data_files"] = [{"filename": n} for n in names]
    state["_fingerprint"] = uuid.uuid4().hex[:16]  # a cache key; nothing reads it back
    (out / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return names
