"""Pieces of rendered text -> token ids and a per-token train mask.

A template renders messages into :class:`Piece` s: ``literal`` pieces are template syntax, in
which the tokenizer's added tokens (``<s>``, ``<|im_end|>``, ...) become their token ids;
content pieces (message text) are always plain text, so an observation containing ``</s>`` or
``[INST]`` never turns into a special token.

Between special tokens the pieces are joined into one *run* and tokenised in one go (so the
tokenisation is the same as for the plain string); a token is trained when it overlaps a trained
piece, found with the tokenizer's character offsets. Many runs are encoded in one batched call
into the Rust tokenizer.

Offsets cost the tokenizer about a third of its time, so for tokenizers whose tokens each cover
exactly as many characters as their vocabulary string has (no normaliser, no pre-tokeniser or
post-processor that drops or trims characters; :func:`char_lengths`) the runs are encoded without
them and a token's characters are found from the running sum of those lengths. A run where the
sum differs from the run's length (a prepended ``▁``, byte-fallback or unknown tokens, multi-byte
characters of a byte-level vocabulary) is encoded again with offsets, so the result is always
the offsets' result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import numpy as np


class Piece(NamedTuple):
    """Rendered text; ``literal`` = template syntax (added tokens recognised), else content."""

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
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; natscale needs a "
                "tokenizer.json (convert it with transformers' AutoTokenizer and save_pretrained)"
            )
        # private copies: never change the caller's tokenizer settings
        self._state = backend.to_str()
        self._tk_first = None  # made on first use: runs rarely come before any special token
        # A run after a special token is a later "section" of the whole string: a Metaspace
        # pre-tokenizer with prepend_scheme "first" adds no "▁" there, so encode such runs with
        # "never" to get exactly the tokens the tokenizer gives the whole rendered string.
        pre = _component(backend.pre_tokenizer)
        if pre is not None and pre.get("type") == "Metaspace" and _first_to_never(pre):
            self._tk_later = _runner(self._state)
            self._tk_later.pre_tokenizer = _metaspace(pre)
        elif pre is not None and _first_to_never(pre):  # nested in a Sequence
            spec = json.loads(self._state)
            _first_to_never(spec["pre_tokenizer"])
            self._tk_later = _runner(json.dumps(spec))
        else:
            self._tk_later = self._tk_first = _runner(self._state)
        self.added = dict(tokenizer.get_added_vocab())
        # characters per token id (None: offsets needed), see the module doc
        self._char_len = char_lengths(_pipeline_spec(backend, self._state))
        names = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self._literals: dict[str, tuple[str | int, ...]] = {}
        # trained runs that are not ASCII, encoded without offsets: [placed by the vocabulary
        # lengths, encoded again with offsets]; once most needed the offsets, such runs are
        # encoded with them at once (see ``_encode_runs``)
        self._wide = [0, 0]

    @property
    def _first(self):
        """The runner for a run that starts the string (the tokenizer's own pre-tokenizer)."""
        if self._tk_first is None:
            self._tk_first = _runner(self._state)
        return self._tk_first

    def _literal(self, text: str) -> tuple[str | int, ...]:
        """The non-empty parts of ``text`` split at added tokens: a ``str`` of plain text or the
        ``int`` id of an added token; memoised, since templates repeat a handful of literals."""
        parts = self._literals.get(text)
        if parts is None:
            split = self._split.split(text) if self._split else [text]
            # odd indices of re.split with a group are the matched added tokens
            parts = tuple(self.added[p] if k % 2 else p for k, p in enumerate(split) if p)
            if len(self._literals) < 4096:
                self._literals[text] = parts
        return parts

    def _items(self, pieces: list[Piece]) -> list[tuple]:
        """[("tok", id, train) | ("run", text, [(start, end)] trained)] for one piece list."""
        items: list[tuple] = []
        text: list[str] = []
        trained: list[list[int]] = []
        pos = 0
        literal = self._literal
        for p_text, p_train, p_literal in pieces:
            for part in literal(p_text) if p_literal else (p_text,):
                if part.__class__ is int:  # an added token: it ends the current run
                    if text:
                        items.append(("run", "".join(text), trained))
                        text, trained, pos = [], [], 0
                    items.append(("tok", part, p_train))
                    continue
                if not part:
                    continue
                end = pos + len(part)
                if p_train:
                    if trained and trained[-1][1] == pos:
                        trained[-1][1] = end  # merge adjacent trained pieces
                    else:
                        trained.append([pos, end])
                text.append(part)
                pos = end
        if text:
            items.append(("run", "".join(text), trained))
        return items

    def encode_batch(self, batch: list[list[Piece]]) -> list[Encoded]:
        """Encode several piece lists with one batched tokenizer call."""
        if not batch:
            return []  # np.split of nothing gives one empty array, not none
        ids, mask, lengths = self.encode_flat(batch)
        cuts = np.cumsum(lengths)[:-1]
        return [
            Encoded(i, m) for i, m in zip(np.split(ids, cuts), np.split(mask, cuts), strict=True)
        ]

    def encode_flat(
        self, batch: list[list[Piece]], *, with_mask: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`encode_batch` as three arrays: every piece list's ids back to back (int32),
        their train mask (bool; all False when not ``with_mask``) and each list's length
        (int64)."""
        plans = [self._items(pieces) for pieces in batch]
        # unique runs only: the instruction turn is the same text in every example of a task
        unique: tuple[dict[str, int], dict[str, int]] = ({}, {})
        # the trained runs, kept only once non-ASCII ones are encoded with offsets at once
        wide_first = with_mask and self._wide[1] > self._wide[0]
        trained_runs: tuple[set[str], set[str]] = (set(), set())
        for plan in plans:
            for k, it in enumerate(plan):
                if it[0] == "run":
                    unique[k > 0].setdefault(it[1], len(unique[k > 0]))
                    if wide_first and it[2]:
                        trained_runs[k > 0].add(it[1])
        fast = self._char_len is not None
        # (the runner of a first run is made only when there is one: see ``_first``)
        encs, with_offsets = [], []
        for later, texts in ((False, unique[0]), (True, unique[1])):
            tk = (self._tk_later if later else self._first) if texts else None
            got, wide = _encode_runs(tk, list(texts), trained_runs[later], fast=fast)
            encs.append(got)
            with_offsets.append(wide)
        # the ids of each group's unique runs back to back in one int32 array: each run's ids
        # cross into Python once, however often it repeats; run u is flat[g][cut[u]:cut[u + 1]]
        flat, cuts = [], []
        for group in encs:
            cut = np.zeros(len(group) + 1, dtype=np.int64)
            np.cumsum([len(enc) for enc in group], out=cut[1:])
            ids_of = (enc.ids for enc in group)
            flat.append(np.fromiter(chain.from_iterable(ids_of), np.int32, count=int(cut[-1])))
            cuts.append(cut.tolist())
        locate = (
            self._locators(plans, unique, encs, flat, cuts, with_offsets)
            if fast and with_mask
            else None
        )
        # every item's ids are a slice of `pool` (group 0, group 1, then the added tokens as
        # they come): src[i] / size[i] of item i, gathered at the end in one indexing
        offset = (0, len(flat[0]))
        pool_tokens: list[int] = []
        token_base = len(flat[0]) + len(flat[1])
        src: list[int] = []
        size: list[int] = []
        starts: list[int] = []  # trained token ranges [start, stop) in the batch's ids
        stops: list[int] = []
        # trained character ranges of runs whose tokens are found from the vocabulary lengths:
        # (group, first token of the run in the batch minus a, a, b, start, end), solved at once
        pending: list[tuple[int, int, int, int, int, int]] = []
        lengths: list[int] = []
        n = 0
        for plan in plans:
            first_token = n
            for k, (kind, value, extra) in enumerate(plan):
                if kind == "tok":
                    if extra:
                        starts.append(n)
                        stops.append(n + 1)
                    src.append(token_base + len(pool_tokens))
                    size.append(1)
                    pool_tokens.append(value)
                    n += 1
                    continue
                later = k > 0
                u = unique[later][value]
                a, b = cuts[later][u], cuts[later][u + 1]
                src.append(offset[later] + a)
                size.append(b - a)
                if extra and with_mask:
                    if locate is None or u not in locate[later]:
                        where = encs[later][u] if locate is None else locate[2][later][u]
                        for start, end in extra:
                            first = _token_at(where, start, end, forward=True)
                            last = _token_at(where, start, end, forward=False)
                            if first is not None and last is not None:
                                starts.append(n + first)
                                stops.append(n + last + 1)
                    else:
                        for start, end in extra:
                            pending.append((later, n - a, a, b, start, end))
                n += b - a
            lengths.append(n - first_token)
        pool = np.concatenate([*flat, np.asarray(pool_tokens, dtype=np.int32)])
        size_a = np.asarray(size, dtype=np.int64)
        gather = np.repeat(np.asarray(src, dtype=np.int64) - (np.cumsum(size_a) - size_a), size_a)
        ids = pool[gather + np.arange(n, dtype=np.int64)]
        # mask: +1 where a trained range starts, -1 where it stops, running sum > 0
        edges = np.zeros(n + 1, dtype=np.int32)
        np.add.at(edges, np.asarray(starts, dtype=np.int64), 1)
        np.add.at(edges, np.asarray(stops, dtype=np.int64), -1)
        if pending:
            assert locate is not None
            for first, last in _solve(pending, locate[3]).values():
                np.add.at(edges, first, 1)
                np.add.at(edges, last, -1)
        mask = np.cumsum(edges[:n]) > 0
        return ids, mask, np.asarray(lengths, dtype=np.int64)

    def _locators(self, plans, unique, encs, flat, cuts, with_offsets) -> tuple:
        """Where each unique run with a trained part finds its tokens' characters:
        ``u in locate[g]`` when the vocabulary lengths of its tokens add up to the run's length
        (``locate[3][g]``: the group's running character count, so token t of the group ends at
        character ``ends[t] - ends[a - 1]`` of a run that starts at token a); else its Encoding
        with offsets (encoded with them at once, ``with_offsets[g]``, or again, in one batch per
        group) is ``locate[2][g][u]``."""
        assert self._char_len is not None
        found: tuple[set, set] = (set(), set())
        redo: tuple[dict[str, int], dict[str, int]] = ({}, {})
        again: tuple[dict, dict] = ({}, {})
        ends: list[np.ndarray | None] = [None, None]
        for plan in plans:
            for k, (kind, text, extra) in enumerate(plan):
                if kind != "run" or not extra:
                    continue
                later = k > 0
                u = unique[later][text]
                if u in found[later] or text in redo[later] or u in again[later]:
                    continue
                if u in with_offsets[later]:
                    again[later][u] = encs[later][u]
                    continue
                if ends[later] is None:  # the group's running character count, once
                    ends[later] = np.cumsum(self._char_len[flat[later]])
                run_ends = ends[later]
                a, b = cuts[later][u], cuts[later][u + 1]
                base = int(run_ends[a - 1]) if a else 0
                placed = b > a and int(run_ends[b - 1]) - base == len(text)
                if placed:
                    found[later].add(u)
                else:
                    redo[later][text] = u
                if not text.isascii():
                    self._wide[not placed] += 1
        for later in (False, True):
            if redo[later]:
                tk = self._tk_later if later else self._first
                encoded = _encode(tk, list(redo[later]), offsets=True)
                again[later].update(zip(redo[later].values(), encoded, strict=True))
        return (*found, again, ends)

    def encode(self, pieces: list[Piece]) -> Encoded:
        return self.encode_batch([pieces])[0]


def _solve(pending: list[tuple], ends: list) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per group, the first token and one past the last token (in the batch's ids) of every
    pending trained character range ``(group, shift, a, b, start, end)`` of a run of tokens
    ``[a, b)`` of the group: the tokens ending after ``start`` and the first ending after
    ``end - 1`` (``bisect_right`` on the running character count, all at once)."""
    rows = np.asarray(pending, dtype=np.int64)
    out = {}
    for later in (0, 1):
        part = rows[rows[:, 0] == later]
        if not len(part):
            continue
        run_ends = ends[later]
        shift, a, b, start, end = part[:, 1], part[:, 2], part[:, 3], part[:, 4], part[:, 5]
        base = np.where(a > 0, run_ends[np.maximum(a - 1, 0)], 0)
        first = np.clip(np.searchsorted(run_ends, base + start, side="right"), a, b)
        last = np.clip(np.searchsorted(run_ends, base + end - 1, side="right"), a, b)
        out[later] = (shift + first, shift + last + 1)
    return out


def _encode_runs(tk, texts: list[str], trained: set[str], *, fast: bool) -> tuple[list, set[int]]:
    """The Encodings of ``texts`` and the positions of those encoded with offsets: all of them
    when not ``fast``; else those in ``trained`` that are not ASCII, the others without. (The
    encoder passes its trained runs once most of its non-ASCII runs needed the offsets: where a
    character outside the vocabulary becomes byte-fallback tokens or byte-level pieces, the
    vocabulary lengths cannot place the tokens, and encoding such a run twice costs more.)"""
    if not texts:
        return [], set()
    if not fast:
        return _encode(tk, texts, offsets=True), set(range(len(texts)))
    wide = [k for k, t in enumerate(texts) if t in trained and not t.isascii()]
    if not wide:
        return _encode(tk, texts, offsets=False), set()
    wide_set = set(wide)
    narrow = [k for k in range(len(texts)) if k not in wide_set]
    out: list = [None] * len(texts)
    for keys, offsets in ((narrow, False), (wide, True)):
        if keys:
            encoded = _encode(tk, [texts[k] for k in keys], offsets=offsets)
            for k, enc in zip(keys, encoded, strict=True):
                out[k] = enc
    return out, wide_set


def _encode(tk, texts: list[str], *, offsets: bool) -> list:
    if offsets or not hasattr(tk, "encode_batch_fast"):
        return tk.encode_batch(texts, add_special_tokens=False)
    return tk.encode_batch_fast(texts, add_special_tokens=False)


# pre-tokenisers that keep every character and change none (Metaspace: " " -> "▁"; ByteLevel:
# one character per byte, so as many as the text has when it is ASCII)
_KEEPING_PRE = {"Metaspace", "ByteLevel", "Digits", "Punctuation", "Split", "Sequence"}
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_UNCOUNTED = 1 << 30  # a length no run has: a run holding such a token takes the offsets path


def char_lengths(spec: dict) -> np.ndarray | None:
    """Characters each token id covers in the text (``int64`` by id), when its vocabulary
    string's length says it for every token of a run whose lengths add up to the run's length;
    None when the tokenizer's pipeline can change characters (then offsets are always used).

    Byte-fallback, unknown and added tokens get a length no run has, so runs holding them use
    offsets."""
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None or not _keeps_chars(spec.get("pre_tokenizer")):
        return None
    if _trims_offsets(spec.get("post_processor")):
        return None
    if model.get("type") == "BPE" and not (
        model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
    ):
        vocab = model["vocab"]
    elif model.get("type") == "Unigram":
        vocab = {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    else:
        return None
    added = [t["id"] for t in spec.get("added_tokens") or []]
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    size = 1 + max(int(ids.max()) if len(ids) else -1, max(added, default=-1))
    lengths = np.full(size, _UNCOUNTED, dtype=np.int64)
    lengths[ids] = np.fromiter(map(len, vocab), dtype=np.int64, count=len(vocab))
    odd = [i for p, i in vocab.items() if not p or (len(p) == 6 and _BYTE_PIECE.fullmatch(p))]
    unk = model.get("unk_token") if model.get("type") == "BPE" else None
    odd += [vocab[unk]] if unk in vocab else []
    if model.get("type") == "Unigram" and model.get("unk_id") is not None:
        odd.append(model["unk_id"])
    lengths[np.asarray(odd + added, dtype=np.int64)] = _UNCOUNTED
    return lengths


def _keeps_chars(pre: dict | None) -> bool:
    if pre is None:
        return True
    kind = pre.get("type")
    if kind not in _KEEPING_PRE:
        return False
    if kind == "Sequence":
        return all(_keeps_chars(p) for p in pre.get("pretokenizers", []))
    if kind in ("Split", "Punctuation"):
        return str(pre.get("behavior")).lower() != "removed" and not pre.get("invert")
    if kind == "Metaspace":
        return len(pre.get("replacement", "")) == 1
    return True


def _trims_offsets(post: dict | None) -> bool:
    if post is None:
        return False
    if post.get("type") == "Sequence":
        return any(_trims_offsets(p) for p in post.get("processors", []))
    return bool(post.get("trim_offsets"))


def _runner(state: str):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(state)
    tk.no_truncation()
    tk.no_padding()
    # message text must never become a special token, whatever it contains
    tk.encode_special_tokens = True
    return tk


def _component(part) -> dict | None:
    """A pipeline component (normaliser, pre-tokenizer, post-processor) as its JSON spec."""
    return None if part is None else json.loads(part.__getstate__())


def _metaspace(spec: dict):
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Metaspace(
        replacement=spec.get("replacement", "▁"),
        prepend_scheme=spec["prepend_scheme"],
        split=spec.get("split", True),
    )


def _pipeline_spec(backend, state: str) -> dict:
    """What :func:`char_lengths` reads of the tokenizer, without parsing a BPE's merges."""
    model = backend.model
    if type(model).__name__ == "BPE":
        model_spec = {
            "type": "BPE",
            "vocab": backend.get_vocab(with_added_tokens=False),
            "unk_token": model.unk_token,
            "continuing_subword_prefix": model.continuing_subword_prefix,
            "end_of_word_suffix": model.end_of_word_suffix,
        }
    else:
        model_spec = json.loads(state)["model"]
    return {
        "normalizer": _component(backend.normalizer),
        "pre_tokenizer": _component(backend.pre_tokenizer),
        "post_processor": _component(backend.post_processor),
        "model": model_spec,
        "added_tokens": [{"id": i} for i in backend.get_added_tokens_decoder()],
    }


def _first_to_never(pre: dict | None) -> bool:
    """Switch Metaspace prepend_scheme "first" to "never" in a pre-tokenizer spec (in place)."""
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "Sequence":
        return any([_first_to_never(p) for p in pre.get("pretokenizers", [])])
    if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first":
        pre["prepend_scheme"] = "never"
        return True
    return False


def _token_at(enc, start: int, end: int, *, forward: bool) -> int | None:
    """First (or last) token covering a character of [start, end); None if none does
    (a normaliser or pre-tokeniser may drop characters such as whitespace)."""
    if start >= end:
        return None
    t = enc.char_to_token(start if forward else end - 1)
    if t is not None:  # the usual case: the edge character itself is in a token
        return t
    chars = range(start + 1, end) if forward else range(end - 2, start - 1, -1)
    for c in chars:
        t = enc.char_to_token(c)
        if t is not None:
            return t
    return None
