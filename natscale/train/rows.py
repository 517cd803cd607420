"""Deterministic sharding of packed rows over ranks, gradient-accumulation steps and epochs.

The rows are read in one global order: epoch 0's seeded permutation, then epoch 1's, and so on.
Optimizer step ``s`` takes the next ``world_size * grad_accum * micro_batch_rows`` rows of that
order; the position in it (``rows_consumed``) is the data cursor that checkpoints carry. Which
rows form a step does not depend on how they are spread over ranks, so 1 rank x accumulation 4
and 2 ranks x accumulation 2 see the same rows, and a resumed run continues with the next row.

Within a step, micro-batch ``m`` of rank ``r`` holds the rows at offsets
``[(m * world_size + r) * B, ... + B)`` of the step's rows (B = micro_batch_rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from natscale.data.schema import ROW_FIELDS


class PreparedRowsReader:
    """Random access to the packed rows of a ``natscale prepare`` output directory."""

    def __init__(self, path: str | Path):
        from natscale.data.prepared import PreparedDir

        self.path = Path(path)
        self._ds = PreparedDir(self.path).open().select_columns(list(ROW_FIELDS))
        self._ds = self._ds.with_format("numpy")
        self.num_rows = len(self._ds)

    def __len__(self) -> int:
        return self.num_rows

    def row(self, index: int) -> dict[str, np.ndarray]:
        return self._ds[int(index)]

    def rows(self, indices: list[int]) -> list[dict[str, Any]]:
        out = []
        for i in indices:
            row = self.row(i)
            row["index"] = int(i)
            out.append(row)
        return out

    def num_classes(self) -> int:
        """1 + the largest segment_class over all rows (only the small per-segment column is read)."""
        top = 0
        for chunk in self._ds.select_columns(["segment_class"]).iter(batch_size=4096):
            for classes in chunk["segment_class"]:
                if len(classes):
                    top = max(top, int(np.max(classes)))
        return top + 1


class RowOrder:
    """Global row order: the concatenation of per-epoch permutations (seed, epoch)."""

    def __init__(self, num_rows: int, *, seed: int, shuffle: bool):
        if num_rows <= 0:
            raise ValueError("the dataset has no rows")
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self._epoch = -1
        self._perm = np.arange(num_rows)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                self._perm = rng.permutation(self.num_rows)
            else:
                self._perm = np.arange(self.num_rows)
        return self._perm

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_rows)
        return int(self._permutation(epoch)[offset])


@dataclass(frozen=True)
class StepPlan:
    """How one optimizer step's rows are split over ranks and micro-batches."""

    world_size: int
    rank: int
    grad_accum: int
    micro_batch_rows: int

    @property
    def rows_per_step(self) -> int:
        return self.world_size * self.grad_accum * self.micro_batch_rows

    def micro_batches(self, order: RowOrder, rows_consumed: int) -> list[list[int]]:
        """Row indices of this rank's ``grad_accum`` micro-batches for the step starting at the cursor."""
        b = self.micro_batch_rows
        out = []
        for m in range(self.grad_accum):
            start = rows_consumed + (m * self.world_size + self.rank) * b
            out.append([order[start + j] for j in range(b)])
        return out

    def steps_for_epochs(self, num_rows: int, epochs: float) -> int:
        return max(1, int(np.ceil(epochs * num_rows / self.rows_per_step)))
