"""The tokenizer's own chat template (``apply_chat_template``) as pieces with train flags.

The template is rendered twice: once with every message's content replaced by a unique
placeholder, which cuts the output into template text (literal pieces) and message slots (once
per layout of roles, tool calls and names: it does not depend on the content), and once with the
real content to check that the template inserts each content unchanged (or stripped; e.g.
Llama-2's ``| trim``). A template that rewrites content (reasoning splitters,
content-dependent branches) is reported with a hint to use a built-in template.

Trained: an assistant message's content plus the template text after it up to and including the
first end-of-turn token (so rendered tool calls and ``<|im_end|>`` / ``</s>`` / ``<|eot_id|>``
are trained, the next header is not).
"""

from __future__ import annotations

import json
import re

from natscale.data.render.encode import Piece
from natscale.data.render.messages import Message
from natscale.data.render.templates import Template

_SLOT = "\ue000{}\ue001"
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")
EOT_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class TemplateError(ValueError):
    pass


class HFChatTemplate(Template):
    name = "hf"

    def __init__(self, tokenizer, observation_role: str = "user", end_of_turn: str | None = None):
        super().__init__(observation_role)
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat_template; use template: llama2, chatml or llama3"
            )
        self.tokenizer = tokenizer
        if end_of_turn is not None:
            self.eot = (end_of_turn,)
        else:
            found = [t for t in (tokenizer.eos_token, *EOT_CANDIDATES) if t]
            vocab = tokenizer.get_vocab()
            self.eot = tuple(t for t in dict.fromkeys(found) if t in vocab)
        self.end_of_turn = self.eot[0] if self.eot else ""
        # whether the template renders `tools`, by the messages' roles (its layout may depend on them)
        self._tool_support: dict[tuple, bool] = {}
        # the template text around the messages, by layout (see _literals)
        self._skeletons: dict[tuple, list[str]] = {}

    def _hf_messages(self, messages: list[Message], contents: list[str]) -> list[dict]:
        out = []
        for msg, content in zip(messages, contents, strict=True):
            m = {"role": self.role(msg), "content": content}
            if msg.tool_calls:
                m["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c.get("arguments")},
                    }
                    for c in msg.tool_calls
                ]
            if msg.name and msg.role == "observation":
                m["name"] = msg.name
            out.append(m)
        return out

    def renders_tools(self, messages: list[Message], tools: list) -> bool:
        """True when the chat template's output changes with ``tools`` (it renders them)."""
        key = tuple(self.role(m) for m in messages)
        if key not in self._tool_support:
            slots = [_SLOT.format(i) for i in range(len(messages))]
            plain = self._render(messages, slots, False)
            self._tool_support[key] = self._render(messages, slots, False, tools) != plain
        return self._tool_support[key]

    def _render(
        self,
        messages: list[Message],
        contents: list[str],
        generation: bool,
        tools: list | None = None,
    ) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                self._hf_messages(messages, contents),
                tools=tools,
                tokenize=False,
                add_generation_prompt=generation,
            )
        except Exception as exc:  # jinja raises its own errors (e.g. roles must alternate)
            raise TemplateError(
                f"the tokenizer's chat template failed: {exc}; set render.observation_role to a "
                "role it accepts, or use a built-in template (llama2, chatml, llama3)"
            ) from exc

    def _literals(
        self, messages: list[Message], generation: bool, tools: list | None, *, fresh: bool
    ) -> list[str]:
        """The template text around the messages: the output with placeholder contents, cut at
        them. It depends only on the messages' layout (roles, tool calls, names), so it is
        rendered once per layout (``fresh``: rendered again)."""
        key = (
            generation,
            json.dumps(tools, sort_keys=True) if tools else None,
            *(
                (
                    self.role(m),
                    m.name if m.role == "observation" else None,
                    json.dumps(m.tool_calls, sort_keys=True) if m.tool_calls else None,
                )
                for m in messages
            ),
        )
        literals = None if fresh else self._skeletons.get(key)
        if literals is None:
            slots = [_SLOT.format(i) for i in range(len(messages))]
            parts = _SLOT_RE.split(self._render(messages, slots, generation, tools))
            literals, order = parts[0::2], [int(x) for x in parts[1::2]]
            if order != list(range(len(messages))):
                raise TemplateError(
                    f"the chat template renders messages in order {order}, not each message "
                    "once; use a built-in template (llama2, chatml, llama3)"
                )
            if len(self._skeletons) >= 4096:
                self._skeletons.clear()
            self._skeletons[key] = literals
        return literals

    def pieces(
        self, messages: list[Message], *, generation: bool = False, tools: list | None = None
    ) -> list[Piece]:
        real = self._render(messages, [m.content for m in messages], generation, tools)
        for fresh in (False, True):  # a cached layout first; on a mismatch, rendered anew
            literals = self._literals(messages, generation, tools, fresh=fresh)
            contents = [m.content for m in messages]
            if _join(literals, contents) == real:
                break
            contents = [c.strip() for c in contents]
            if _join(literals, contents) == real:
                break
        else:
            raise TemplateError(
                "the chat template changes message content (beyond stripping it); "
                "use a built-in template (llama2, chatml, llama3)"
            )
        out = [Piece(literals[0], False, True)]
        for msg, content, after in zip(messages, contents, literals[1:], strict=True):
            out.append(Piece(content, msg.train))
            cut = self._eot_end(after) if (msg.role == "assistant" and msg.train) else 0
            if cut:
                out.append(Piece(after[:cut], True, True))
            out.append(Piece(after[cut:], False, True))
        return [p for p in out if p.text]

    def _eot_end(self, text: str) -> int:
        """End offset of the first end-of-turn token in ``text`` (0 if there is none)."""
        hits = [(i, len(t)) for t in self.eot if (i := text.find(t)) >= 0]
        if not hits:
            return 0
        i, n = min(hits)
        return i + n


def _join(literals: list[str], contents: list[str]) -> str:
    out = [literals[0]]
    for c, lit in zip(contents, literals[1:], strict=True):
        out += [c, lit]
    return "".join(out)
