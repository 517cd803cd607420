"""A ``natscale prepare`` output folder: its layout, its atomic write and its checked read.

Layout of ``OUT_DIR`` (what the trainer reads)::

    OUT_DIR/
      data-*.arrow, dataset_info.json, state.json   packed rows, one Arrow shard per packing
                                                    window (the save_to_disk layout, shards.py)
      stats.json                                    counts, classes, packing efficiency
      prepare_config.yaml                           the resolved prepare config
      tokenizer/                                    the tokenizer the ids belong to
      .natscale-output                              marker: what `overwrite` may replace

``datasets.load_from_disk(OUT_DIR)`` gives the rows: the ``schema.ROW_FIELDS`` columns plus
``num_tokens`` and ``num_trained`` (int64 per row); ``natscale.data.output`` encodes them.

:class:`PreparedDir` names these paths once. Its :meth:`~PreparedDir.write` fills a hidden
temporary directory next to ``OUT_DIR`` and renames it into place, so a failure leaves nothing
half-written. Every reader of prepared data (the trainer, its preflight, ``natscale launch``,
``natscale bench``) opens it through :meth:`~PreparedDir.open`, so a half-written or damaged folder
(a missing or truncated ``data-*.arrow`` file, a missing ``stats.json``) is one named error,
:class:`PreparedDataError`, instead of a traceback from deep inside ``datasets``/``pyarrow``.
:func:`first_bad_token` scans a whole token-id column for ids outside the vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from natscale.atomic import PREPARED, atomic_output_dir

REQUIRED_FILES = ("state.json", "dataset_info.json", "stats.json")
OVERWRITE_HINT = "remove it or set overwrite: true (--overwrite)"
OUTPUT_KIND = PREPARED  # the marker kind of a prepared-data folder (natscale.atomic)
RERUN = "re-run `natscale prepare` to write it again"


class PreparedDataError(ValueError):
    """A prepared-data folder is missing, incomplete or damaged (bad input: exit code 2)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreparedDataError(f"{path}: unreadable ({exc}); {RERUN}") from exc


def _count_rows(path: Path) -> int:
    """Rows of one Arrow stream file, read through a memory map (no copy); raises if damaged."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            return sum(batch.num_rows for batch in reader)
    except (OSError, pa.ArrowException) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise PreparedDataError(
            f"{path}: truncated or damaged Arrow file ({size:,} bytes; {exc}); {RERUN}"
        ) from exc


class PreparedDir:
    """The paths of a prepared-data folder, and writing and reading it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)

    def __repr__(self) -> str:
        return f"PreparedDir({str(self.root)!r})"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def prepare_config(self) -> Path:
        return self.root / "prepare_config.yaml"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def write(
        self,
        fill: Callable[[PreparedDir], Any],
        *,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike] = (),
        hint: str = OVERWRITE_HINT,
    ) -> Path:
        """Call ``fill(PreparedDir(tmp_dir))`` and rename ``tmp_dir`` to this folder; remove it
        on failure. Returns the folder's resolved path.

        ``overwrite`` replaces only an earlier prepared-data folder, never one holding ``inputs``
        (see ``natscale.atomic``); ``hint`` ends the error of an existing folder (what to do)."""
        out = self.root.resolve()
        with atomic_output_dir(
            out, kind=OUTPUT_KIND, overwrite=overwrite, inputs=inputs, hint=hint
        ) as tmp:
            fill(PreparedDir(tmp))
        return out

    def check_complete(self) -> int:
        """Raise :class:`PreparedDataError` unless this is a complete prepared-data folder.

        Checks the datasets metadata, ``stats.json``, that every data file ``state.json`` lists
        is there and reads to its end, and that the row count matches ``stats.json`` when it has
        one. Returns the number of rows.
        """
        d = self.root
        if not d.is_dir():
            raise PreparedDataError(
                f"{d}: no such folder; run `natscale prepare CONFIG --out {d}` first"
            )
        missing = [name for name in REQUIRED_FILES if not (d / name).is_file()]
        if missing:
            raise PreparedDataError(
                f"{d} is not a complete `natscale prepare` output: {', '.join(missing)} missing "
                f"(half-written or not prepared data?); {RERUN}"
            )
        state = _read_json(self.state)
        stats = _read_json(self.stats)
        files = [
            f.get("filename") for f in (state or {}).get("_data_files", []) if isinstance(f, dict)
        ]
        if not files or not all(isinstance(f, str) for f in files):
            raise PreparedDataError(f"{self.state}: lists no data files; {RERUN}")
        absent = [name for name in files if not (d / name).is_file()]
        if absent:
            raise PreparedDataError(
                f"{d}: data file(s) {', '.join(absent)} missing (state.json lists {len(files)}); "
                f"{RERUN}"
            )
        rows = sum(_count_rows(d / name) for name in files)
        expected = (stats.get("packing") or {}).get("rows") if isinstance(stats, dict) else None
        if isinstance(expected, int) and expected != rows:
            raise PreparedDataError(
                f"{d}: the data files hold {rows:,} rows but stats.json says {expected:,} "
                f"(a truncated data-*.arrow file?); {RERUN}"
            )
        return rows

    def open(self) -> Any:
        """The ``datasets.Dataset`` of this folder, after :meth:`check_complete`."""
        from datasets import load_from_disk

        self.check_complete()
        try:
            return load_from_disk(str(self.root))
        except Exception as exc:  # whatever datasets raises, the folder is at fault
            raise PreparedDataError(f"{self.root}: cannot be loaded ({exc}); {RERUN}") from exc

    def class_names(self, num_classes: int) -> list[str]:
        """Class names from ``stats.json`` (``classes``, indexed by segment_class), else
        class<i>."""
        names: list[str] = []
        if self.stats.is_file():
            stats = json.loads(self.stats.read_text(encoding="utf-8"))
            names = [str(n) for n in stats.get("classes", [])]
        names += [f"class{i}" for i in range(len(names), num_classes)]
        return names


def first_bad_token(dataset: Any, vocab_size: int, column: str = "input_ids") -> tuple[int, int]:
    """``(row, id)`` of the first token id outside ``[0, vocab_size)``, or ``(-1, -1)``.

    One vectorised pass over the whole Arrow column (chunk by chunk, through a zero-copy
    view of the values): ``pyarrow.compute.min_max`` per chunk, numpy only to locate the
    row in a chunk that holds a bad id.
    """
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    if getattr(dataset, "_indices", None) is not None:
        raise ValueError("first_bad_token needs a dataset without an indices mapping")
    first_row = 0
    for chunk in table.column(column).chunks:
        values = chunk.flatten()
        if len(values):
            lo_hi = pc.min_max(values)
            lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
            if lo < 0 or hi >= vocab_size:
                ids = values.to_numpy(zero_copy_only=False)
                pos = int(np.flatnonzero((ids < 0) | (ids >= vocab_size))[0])
                offsets = chunk.offsets.to_numpy()
                offsets = offsets - offsets[0]
                row = int(np.searchsorted(offsets, pos, side="right")) - 1
                return first_row + row, int(ids[pos])
        first_row += len(chunk)
    return -1, -1


def longest_row(dataset: Any, column: str = "input_ids") -> int:
    """The number of tokens of the longest row (one vectorised pass over the list lengths)."""
    return _longest_list(dataset, column)


def most_segments(dataset: Any) -> int:
    """The most segments (examples) any row holds: 1 for ``pack.algorithm: none`` data."""
    return max(_longest_list(dataset, "cu_seqlens") - 1, 0)


def _longest_list(dataset: Any, column: str) -> int:
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    return int(pc.max(pc.list_value_length(table.column(column))).as_py() or 0)
