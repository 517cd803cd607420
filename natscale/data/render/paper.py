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
    segs = segments(messages)
    encs = encoder.encode_batch([pieces for pieces, _ in segs])
    ids = [e.ids for e in encs]
    mask = [np.full(len(e), train, dtype=bool) for e, (_, train) in zip(encs, segs, strict=True)]
    if not ids or not len(ids[-1]) or int(ids[-1][-1]) != eos_id:
        ids.append(np.array([eos_id], dtype=np.int32))
        mask.append(np.ones(1, dtype=bool))
    return Encoded(np.concatenate(ids).astype(np.int32), np.concatenate(mask))
