"""What a prepared dataset trains: its segments decoded, the trained text marked.

A row's segment ``s`` holds tokens ``cu_seqlens[s]:cu_seqlens[s + 1]``; token ``t + 1`` of it is
trained when ``targets[t]`` is not ``-100`` (see :mod:`natscale.data.schema`). Each segment is
decoded with the prepared tokenizer, special tokens included, as runs of trained and untrained
text; a run's text is the difference between the decodings of the segment up to its end and up to
its start in the decoding of the whole segment, so word boundaries come out as the tokenizer
writes the whole text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from natscale.data.schema import IGNORE_INDEX


@dataclass
class Segment:
    """One example of a row: its class, weight, token counts and decoded ``(text, trained)``."""

    row: int
    index: int
    class_name: str
    weight: float
    tokens: int
    trained: int
    parts: list[tuple[str, bool]]


def trained_flags(targets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Per token of ``[start, end)``: is it a training target (the first never is)."""
    flags = np.zeros(end - start, dtype=bool)
    flags[1:] = targets[start : end - 1] != IGNORE_INDEX
    return flags


def decode_runs(tokenizer: Any, ids: Sequence[int], flags: np.ndarray) -> list[tuple[str, bool]]:
    """``ids`` decoded as runs of equal ``flags``: ``[(text, flag), ...]``, which join up to the
    decoding of all of ``ids`` (a character whose bytes two runs share goes to the later one)."""
    ids = [int(i) for i in ids]
    bounds = [0, *(np.flatnonzero(np.diff(flags.astype(np.int8))) + 1).tolist(), len(ids)]

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    full = decode(ids)
    cuts = [0]
    for b in bounds[1:-1]:  # where the decoding up to the boundary stops agreeing with `full`
        cuts.append(max(cuts[-1], _agreeing(decode(ids[:b]), full)))
    cuts.append(len(full))
    return [
        (full[a:b], bool(flags[start]))
        for (a, b), start in zip(itertools.pairwise(cuts), bounds, strict=False)
        if b > a
    ]


def _agreeing(text: str, full: str) -> int:
    """How many leading characters ``text`` shares with ``full``."""
    if full.startswith(text):
        return len(text)
    n = 0
    while n < min(len(text), len(full)) and text[n] == full[n]:
        n += 1
    return n


def segments(
    rows: Any,
    tokenizer: Any,
    class_names: Sequence[str],
    indices: Iterable[int],
    *,
    only: int | None = None,
) -> Iterator[Segment]:
    """The segments of the rows ``indices`` of the dataset ``rows`` (numpy format), in order;
    ``only``: those of this class index."""
    for r in indices:
        row = rows[int(r)]
        ids, targets, cu = row["input_ids"], row["targets"], row["cu_seqlens"]
        for s in range(len(cu) - 1):
            cls = int(row["segment_class"][s])
            if only is not None and cls != only:
                continue
            a, b = int(cu[s]), int(cu[s + 1])
            flags = trained_flags(targets, a, b)
            yield Segment(
                row=int(r),
                index=s,
                class_name=class_names[cls] if cls < len(class_names) else f"class{cls}",
                weight=float(row["segment_weight"][s]),
                tokens=b - a,
                trained=int(flags.sum()),
                parts=decode_runs(tokenizer, ids[a:b], flags),
            )
