"""Packed rows as the ``datasets.Dataset`` a prepared-data folder holds (see ``prepared.py``).

``rows_to_dataset`` builds the ``schema.ROW_FIELDS`` columns plus ``num_tokens`` and
``num_trained`` (int64 per row) column-wise through Arrow; ``PreparedDir.write`` puts them on disk.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from natscale.data.packing import PackedColumns
from natscale.data.schema import ROW_FIELDS

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


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
