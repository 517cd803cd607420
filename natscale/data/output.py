"""Writing a prepared dataset directory atomically.

Layout of ``OUT_DIR`` (what the trainer reads)::

    OUT_DIR/
      data-*.arrow, dataset_info.json, state.json   datasets.Dataset.save_to_disk of packed rows
      stats.json                                    counts, classes, packing efficiency
      prepare_config.yaml                           the resolved prepare config
      tokenizer/                                    the tokenizer the ids belong to
      .natscale-output                              marker: what `overwrite` may replace

``datasets.load_from_disk(OUT_DIR)`` gives the rows: the ``schema.ROW_FIELDS`` columns plus
``num_tokens`` and ``num_trained`` (int64 per row). Everything is written to a hidden temporary
directory next to ``OUT_DIR`` and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from natscale.atomic import PREPARED, atomic_output_dir
from natscale.data.packing import PackedColumns
from natscale.data.schema import ROW_FIELDS

OVERWRITE_HINT = "remove it or set overwrite: true (--overwrite)"
OUTPUT_KIND = PREPARED  # the marker kind of a prepared-data folder (natscale.atomic)

ROWS_PER_CHUNK = 2048  # keeps list offsets in int32 range for any row length


def _list_column(arrays: list[np.ndarray] | np.ndarray, dtype: str):
    """One Arrow list column from per-row arrays, or from a ``[rows, L]`` matrix (its rows
    are already back to back: the values are a view, not a copy)."""
    import pyarrow as pa

    chunks = []
    for s in range(0, len(arrays), ROWS_PER_CHUNK):
        part = arrays[s : s + ROWS_PER_CHUNK]
        offsets = np.zeros(len(part) + 1, dtype=np.int32)
        np.cumsum([a.shape[0] for a in part], out=offsets[1:])
        if isinstance(part, np.ndarray):
            values = part.reshape(-1)
        else:
            values = np.concatenate(part) if part else np.zeros(0, dtype)
        values = values.astype(dtype, copy=False)
        chunks.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
    return pa.chunked_array(chunks, type=pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))


def rows_to_dataset(rows: PackedColumns):
    """A ``datasets.Dataset`` of the packed rows (built column-wise through Arrow)."""
    import pyarrow as pa
    from datasets import Dataset

    cols = rows.columns()
    table = pa.table(
        {
            **{name: _list_column(cols[name], dtype) for name, dtype in ROW_FIELDS.items()},
            "num_tokens": pa.array(rows.num_tokens, type=pa.int64()),
            "num_trained": pa.array(rows.num_trained, type=pa.int64()),
        }
    )
    # a fresh fingerprint: hashing gigabytes of rows for a cache key we never use is slow
    return Dataset(table, fingerprint=uuid.uuid4().hex)


def write_atomic(
    out_dir: str | os.PathLike,
    fill: Callable[[Path], Any],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Call ``fill(tmp_dir)`` and rename ``tmp_dir`` to ``out_dir``; remove it on failure.

    ``overwrite`` replaces only an earlier prepared-data folder, never one holding ``inputs``
    (see ``natscale.atomic``)."""
    out = Path(out_dir).resolve()
    with atomic_output_dir(
        out, kind=OUTPUT_KIND, overwrite=overwrite, inputs=inputs, hint=OVERWRITE_HINT
    ) as tmp:
        fill(tmp)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
