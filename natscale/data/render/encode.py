"""Pieces of rendered text -> token ids and a per-token train mask.

A template renders messages into :class:`Piece` s: ``literal`` pieces are template syntax, in
which the tokenizer's added tokens (``<s>``, ``<|im_end|>``, ...) become their token ids;
content pieces (message text) are always plain text, so an observation containing ``</s>`` or
``[INST]`` never turns into a special token.

Between special tokens the pieces are joined into one *run* and tokenised in one go (so the
tokenisation is the same as for the plain string); a token is trained when it overlaps a trained
piece, found with the tokenizer's character offsets. Many runs are encoded in one batched call
into the Rust tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Piece:
    text: str
    train: bool = False
    literal: bool = False


@dataclass
class Encoded:
    """``ids`` int32 [n] and ``mask`` bool [n] (True = the token is a training target)."""

    ids: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class PieceEncoder:
    """Encodes piece lists with a fast tokenizer (a ``transformers`` fast tokenizer)."""

    def __init__(self, tokenizer) -> None:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; natscale needs a "
                "tokenizer.json (convert it with transformers' AutoTokenizer and save_pretrained)"
            )
        # a private copy: never change the caller's tokenizer settings
        self._tk = Tokenizer.from_str(backend.to_str())
        self._tk.no_truncation()
        self._tk.no_padding()
        # message text must never become a special token, whatever it contains
        self._tk.encode_special_tokens = True
        self.added = dict(tokenizer.get_added_vocab())
        names = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    def _items(self, pieces: list[Piece]) -> list[tuple]:
        """[("tok", id, train) | ("run", text, [(start, end, train)])] for one piece list."""
        items: list[tuple] = []
        text: list[str] = []
        spans: list[tuple[int, int, bool]] = []
        pos = 0

        def flush() -> None:
            nonlocal text, spans, pos
            if text:
                items.append(("run", "".join(text), spans))
            text, spans, pos = [], [], 0

        for p in pieces:
            parts = self._split.split(p.text) if (p.literal and self._split) else [p.text]
            for k, part in enumerate(parts):
                if not part:
                    continue
                if k % 2 == 1:  # an added token (odd indices of re.split with a group)
                    flush()
                    items.append(("tok", self.added[part], p.train))
                else:
                    text.append(part)
                    spans.append((pos, pos + len(part), p.train))
                    pos += len(part)
        flush()
        return items

    def encode_batch(self, batch: list[list[Piece]]) -> list[Encoded]:
        """Encode several piece lists with one batched tokenizer call."""
        plans = [self._items(pieces) for pieces in batch]
        texts = [it[1] for plan in plans for it in plan if it[0] == "run"]
        encs = iter(self._tk.encode_batch(texts, add_special_tokens=False) if texts else [])
        out = []
        for plan in plans:
            ids: list[int] = []
            mask: list[bool] = []
            for kind, value, extra in plan:
                if kind == "tok":
                    ids.append(value)
                    mask.append(extra)
                    continue
                enc = next(encs)
                run_ids = enc.ids
                run_mask = [False] * len(run_ids)
                for start, end in _trained_ranges(extra):
                    first = _token_at(enc, start, end, forward=True)
                    last = _token_at(enc, start, end, forward=False)
                    if first is not None and last is not None:
                        run_mask[first : last + 1] = [True] * (last + 1 - first)
                ids.extend(run_ids)
                mask.extend(run_mask)
            out.append(Encoded(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)))
        return out

    def encode(self, pieces: list[Piece]) -> Encoded:
        return self.encode_batch([pieces])[0]


def _trained_ranges(spans: list[tuple[int, int, bool]]) -> list[tuple[int, int]]:
    """Merged [start, end) character ranges of the trained spans of a run."""
    out: list[list[int]] = []
    for start, end, train in spans:
        if not train or end <= start:
            continue
        if out and out[-1][1] == start:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _token_at(enc, start: int, end: int, *, forward: bool) -> int | None:
    """First (or last) token covering a character of [start, end); None if none does
    (a normaliser or pre-tokeniser may drop characters such as whitespace)."""
    chars = range(start, end) if forward else range(end - 1, start - 1, -1)
    for c in chars:
        t = enc.char_to_token(c)
        if t is not None:
            return t
    return None
