"""``render.paper_compat``: the NAT paper's own preprocessing, token for token.

The paper renders a conversation with FastChat's ``llama-2`` template (roles ``[INST]`` /
``[/INST]``, separators ``" "`` and ``" </s><s>"``) cut into segments at every change of the
train flag, tokenises **each segment on its own** (``tokenizer(segment,
add_special_tokens=False)``, the first one with ``<s>`` in front), trains the whole of a trained
segment (``" {assistant} </s>"``) and, when the last token is not ``</s>``, appends a trained
``</s>``. Differences from the default ``llama2`` rendering (docs/data.md, "Paper-exact
rendering"):

- each segment is a fresh string, so a sentencepiece tokenizer that prepends ``▁`` to every
  string (Llama-2's) gives an extra trained ``▁`` token after every ``[/INST]``;
- message text is not stripped (a trained trailing ``\\n`` survives, a question's trailing space
  stays);
- the trailing untrained turn (``Observation: Episode finished``) is kept and the ``</s>``
  appended after it is trained (an empty conversation trains only that ``</s>``).

Message text is still tokenised as plain text (a ``</s>`` inside an observation stays text).
"""

from __future__ import annotations

import numpy as np

from natscale.data.render.encode import Encoded, Piece, PieceEncoder
from natscale.data.render.messages import Message
from natscale.data.render.templates import content_with_tools

SYSTEM = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n"
SEPS = (" ", " </s><s>")  # FastChat llama-2: after a user turn, after an assistant turn


def _lit(text: str) -> Piece:
    return Piece(text, False, True)


def segments(messages: list[Message]) -> list[tuple[list[Piece], bool]]:
    """The paper's ``(segment, trained)`` list, same-flag neighbours merged, ``<s>`` first."""
    msgs = list(messages)
    system = msgs.pop(0).content if msgs and msgs[0].role == "system" else ""
    out: list[tuple[list[Piece], bool]] = []
    pending: list[Piece] = [_lit(SYSTEM.format(system=system) if system else "[INST] ")]
    for i, msg in enumerate(msgs):
        if msg.role == "system":
            raise ValueError("paper_compat: a system message is only allowed first")
        tag = "[/INST]" if msg.role == "assistant" else "[INST]"
        text = content_with_tools(msg) if msg.tool_calls else msg.content
        if not text:  # the paper: an empty message renders only its tag
            out.append(([*pending, _lit(tag)], False))
            pending = []
        elif i == 0:
            if msg.train:
                out += [(pending, False), ([Piece(text, True)], True)]
            else:
                out.append(([*pending, Piece(text)], False))
            pending = [_lit(" ")]
        elif msg.train:
            out.append(([*pending, _lit(tag)], False))
            if SEPS[i % 2] == " </s><s>":  # </s> trained so that the model learns to stop
                out.append(([_lit(" "), Piece(text, True), _lit(" </s>")], True))
                pending = [_lit("<s>")]
            else:
                out.append(([_lit(" "), Piece(text, True)], True))
                pending = [_lit(SEPS[i % 2])]
        else:
            out.append(([*pending, _lit(f"{tag} "), Piece(text)], False))
            pending = [_lit(SEPS[i % 2])]
    merged: list[tuple[list[Piece], bool]] = []
    for pieces, train in out:
        if merged and merged[-1][1] == train:
            merged[-1][0].extend(pieces)
        else:
            merged.append((list(pieces), train))
    merged = [(p, t) for p, t in merged if any(x.text for x in p)]
    if merged:
        merged[0][0].insert(0, _lit("<s>"))
    return merged


def encode_paper(encoder: PieceEncoder, messages: list[Message], eos_id: int) -> Encoded:
    """Token ids and train mask of ``messages`` as the paper's preprocessing makes them."""
    ids, mask, _ = encode_paper_flat(encoder, [segments(messages)], eos_id)
    return Encoded(ids, mask)


def encode_paper_flat(
    encoder: PieceEncoder, segs: list[list[tuple[list[Piece], bool]]], eos_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`encode_paper` of several conversations (their :func:`segments`) in one batched
    tokenizer call: their ids back to back (int32), train mask (bool) and lengths (int64)."""
    pieces = [p for conv in segs for p, _ in conv]
    ids, _, seg_len = encoder.encode_flat(pieces, with_mask=False)
    # a segment's tokens all take its flag
    mask = np.repeat(np.array([t for conv in segs for _, t in conv], dtype=bool), seg_len)
    # each conversation's length, and a trained </s> appended where its last token is not one
    per_conv = np.array([len(conv) for conv in segs], dtype=np.int64)
    conv_of_seg = np.repeat(np.arange(len(segs)), per_conv)
    lengths = np.bincount(conv_of_seg, weights=seg_len, minlength=len(segs)).astype(np.int64)
    ends = np.cumsum(lengths)
    add = lengths == 0
    add[~add] = ids[ends[~add] - 1] != eos_id
    ids = np.insert(ids, ends[add], eos_id).astype(np.int32)
    mask = np.insert(mask, ends[add], True)
    return ids, mask, lengths + add
