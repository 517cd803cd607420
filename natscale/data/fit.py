"""Trim, truncate or drop encoded examples before packing, a whole chunk at a time.

A chunk is what a render worker makes (``render.batch.compact_range``): its encoded examples'
ids and train masks back to back, their lengths and its failures by position. :func:`fit_chunk`
applies ``prepare``'s rules to every example of it with a few numpy operations (no Python loop
per example), in the worker that rendered it, so the main process receives only what is packed:

- an example with no trained token after its first is dropped (``no_trained_tokens``);
- ``trim_tail``: the tokens after its last trained one are cut (``tail_tokens_trimmed``;
  attention is causal, so they change no loss);
- still longer than ``max_seq_len``: dropped (``overlong: drop``, ``too_long``) or cut to it
  (``truncated``, ``truncated_tokens``), then dropped when nothing trained is left
  (``no_trained_tokens_after_truncation``).

The first token of an example is never a target (nothing predicts it), so "trained" always means
a trained token at position 1 or later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEPT, FAILED = 0, 1
# status codes of dropped examples, by the counter each adds to
DROPPED = {2: "no_trained_tokens", 3: "too_long", 4: "no_trained_tokens_after_truncation"}
NO_TRAINED, TOO_LONG, NONE_AFTER_TRUNCATION = 2, 3, 4
COUNTERS = (
    "too_long",
    "no_trained_tokens",
    "no_trained_tokens_after_truncation",
    "truncated",
    "truncated_tokens",
    "tail_tokens_trimmed",
)


@dataclass
class FittedChunk:
    """One chunk after :func:`fit_chunk`.

    ``status[k]`` says what became of example ``k`` of the chunk (``KEPT``, ``FAILED`` or a
    ``DROPPED`` code); the kept examples' ids (int32) and masks (bool) are back to back in
    ``ids`` / ``mask``, ``lengths[j]`` tokens and ``trained[j]`` trained tokens (after the first)
    for the ``j``-th kept one. ``failures`` are the render failures ``(reason, message)`` by
    position; ``counts`` adds to ``COUNTERS``."""

    status: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    trained: np.ndarray
    failures: dict[int, tuple[str, str]]
    counts: dict[str, int]

    def split(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The kept examples' ids and masks, one array each (views, no copies); none when no
        example of the chunk is kept (``np.split`` would give one empty array, shifting every
        later example of the window by one)."""
        if not self.lengths.shape[0]:
            return [], []
        cuts = np.cumsum(self.lengths)[:-1]
        return np.split(self.ids, cuts), np.split(self.mask, cuts)


def fit_chunk(
    compact: tuple, *, max_seq_len: int, overlong: str = "truncate", trim_tail: bool = True
) -> FittedChunk:
    """Apply the module's rules to the ``(count, ids, mask, lengths, failures)`` of a chunk."""
    count, ids, mask, lengths, failures = compact
    lengths = np.asarray(lengths, dtype=np.int64)
    n = lengths.shape[0]
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)  # example of each token
    pos = np.arange(ids.shape[0], dtype=np.int64) - starts[owner]  # position in its example
    trained_at = mask & (pos > 0)
    hits = np.flatnonzero(trained_at)
    hit_owner = owner[hits]
    num_trained = np.bincount(hit_owner, minlength=n)
    # the last trained position of each example: the last hit before the owner changes
    last = np.full(n, -1, dtype=np.int64)
    if hits.size:
        ends = np.flatnonzero(np.diff(hit_owner, append=-1))
        last[hit_owner[ends]] = pos[hits[ends]]

    status = np.full(n, KEPT, dtype=np.int8)
    has = num_trained > 0
    status[~has] = NO_TRAINED
    counts = dict.fromkeys(COUNTERS, 0)
    counts["no_trained_tokens"] = int(n - has.sum())
    new_len = lengths.copy()
    if trim_tail:
        new_len[has] = last[has] + 1
        counts["tail_tokens_trimmed"] = int((lengths - new_len)[has].sum())
    over = has & (new_len > max_seq_len)
    if overlong == "drop":
        status[over] = TOO_LONG
        counts["too_long"] = int(over.sum())
    elif over.any():
        counts["truncated"] = int(over.sum())
        counts["truncated_tokens"] = int((new_len[over] - max_seq_len).sum())
        new_len[over] = max_seq_len
        left = np.bincount(hit_owner[pos[hits] < max_seq_len], minlength=n)
        gone = over & (left == 0)
        status[gone] = NONE_AFTER_TRUNCATION
        counts["no_trained_tokens_after_truncation"] = int(gone.sum())

    kept = status == KEPT
    take = kept[owner] & (pos < new_len[owner])
    kept_trained = np.bincount(hit_owner[take[hits]], minlength=n)[kept]
    full = status
    if failures:
        full = np.full(count, FAILED, dtype=np.int8)
        full[[k for k in range(count) if k not in failures]] = status
    return FittedChunk(
        status=full,
        ids=ids[take],
        mask=mask[take],
        lengths=new_len[kept],
        trained=kept_trained,
        failures=failures,
        counts=counts,
    )
