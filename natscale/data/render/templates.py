"""Built-in chat templates for tokenizers without a chat template (or to pin the paper's format).

Each turns messages into :class:`~natscale.data.render.encode.Piece` s. Trained: an assistant
message's text and the token that ends it (with the template's whitespace between them); never
the headers. Rendered strings (``{c}`` = content, ``[...]`` = trained)::

    llama2   <s>[INST] {user} [/INST][ {assistant} </s>]<s>[INST] {observation} [/INST][ ... </s>]
             (system: "<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]"; the paper's
             FastChat llama-2 format; content is stripped as in Llama-2-chat's own template)
    chatml   <|im_start|>{role}\\n{c}<|im_end|>\\n     assistant: [{c}<|im_end|>]
    llama3   <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{c}<|eot_id|>
             assistant: [{c}<|eot_id|>] (content stripped, as Llama-3's template)

Observations use the role ``observation_role`` (default ``user``, as the paper). Assistant tool
calls are appended to the content as ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``.
"""

from __future__ import annotations

import json

from natscale.data.render.encode import Piece
from natscale.data.render.messages import Message


def content_with_tools(msg: Message) -> str:
    text = msg.content
    for call in msg.tool_calls or []:
        body = json.dumps({"name": call["name"], "arguments": call.get("arguments")})
        text += ("\n" if text else "") + f"<tool_call>\n{body}\n</tool_call>"
    return text


class Template:
    name = ""
    required_tokens: tuple[str, ...] = ()
    end_of_turn = ""

    def __init__(self, observation_role: str = "user") -> None:
        self.observation_role = observation_role

    def role(self, msg: Message) -> str:
        return self.observation_role if msg.role == "observation" else msg.role

    def pieces(self, messages: list[Message], *, generation: bool = False) -> list[Piece]:
        raise NotImplementedError

    def renders_tools(self, messages: list[Message], tools: list) -> bool:
        """Whether the template itself renders tool schemas (else they go in the system
        prompt, :mod:`natscale.data.render.tools`)."""
        return False

    def drops_tool_call_text(self) -> bool:
        """Whether the text of an assistant message that calls a tool is left out."""
        return False


class Llama2(Template):
    name = "llama2"
    required_tokens = ("<s>", "</s>")
    end_of_turn = "</s>"

    def pieces(self, messages: list[Message], *, generation: bool = False) -> list[Piece]:
        out: list[Piece] = []
        system = ""
        msgs = list(messages)
        if msgs and msgs[0].role == "system":
            system = msgs.pop(0).content.strip()
        for msg in msgs:
            text = (content_with_tools(msg) if msg.tool_calls else msg.content).strip()
            train = bool(msg.train)
            if msg.role == "assistant":
                out += [_L2_OPEN[train], Piece(text, train), _L2_CLOSE[train]]
                continue
            if msg.role == "system":
                raise ValueError("llama2: a system message is only allowed first")
            head = _L2_INST
            if system:
                head = Piece(f"<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", False, True)
                system = ""
            out += [head, Piece(text, train), _L2_INST_END]
        if system:
            raise ValueError("llama2: a system message needs a user message after it")
        return out


# the template's constant pieces, indexed by the train flag: built once, not per message
_L2_OPEN = (Piece(" ", False, True), Piece(" ", True, True))
_L2_CLOSE = (Piece(" </s>", False, True), Piece(" </s>", True, True))
_L2_INST = Piece("<s>[INST] ", False, True)
_L2_INST_END = Piece(" [/INST]", False, True)


class ChatML(Template):
    name = "chatml"
    required_tokens = ("<|im_start|>", "<|im_end|>")
    end_of_turn = "<|im_end|>"

    def pieces(self, messages: list[Message], *, generation: bool = False) -> list[Piece]:
        out: list[Piece] = []
        for msg in messages:
            train = msg.train and msg.role == "assistant"
            out += [
                Piece(f"<|im_start|>{self.role(msg)}\n", False, True),
                Piece(content_with_tools(msg), msg.train),
                Piece("<|im_end|>", train, True),
                Piece("\n", False, True),
            ]
        if generation:
            out.append(Piece("<|im_start|>assistant\n", False, True))
        return out


class Llama3(Template):
    name = "llama3"
    required_tokens = (
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    )
    end_of_turn = "<|eot_id|>"

    def pieces(self, messages: list[Message], *, generation: bool = False) -> list[Piece]:
        out = [Piece("<|begin_of_text|>", False, True)]
        for msg in messages:
            train = msg.train and msg.role == "assistant"
            out += [
                Piece(f"<|start_header_id|>{self.role(msg)}<|end_header_id|>\n\n", False, True),
                Piece(content_with_tools(msg).strip(), msg.train),
                Piece("<|eot_id|>", train, True),
            ]
        if generation:
            out.append(Piece("<|start_header_id|>assistant<|end_header_id|>\n\n", False, True))
        return out


BUILTIN: dict[str, type[Template]] = {"llama2": Llama2, "chatml": ChatML, "llama3": Llama3}
