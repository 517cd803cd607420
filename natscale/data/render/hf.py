"""The tokenizer's own chat template (``apply_chat_template``) as pieces with train flags.

The template is rendered twice: once with every message's content replaced by a unique
placeholder, which cuts the output into template text (literal pieces) and message slots (once
per layout of roles, tool calls and names: it does not depend on the content), and once with the
real content to check that the template inserts each content unchanged (or stripped; e.g.
Llama-2's ``| trim``). A template that rewrites content (reasoning splitters,
content-dependent branches) is reported with a hint to use a built-in template.

The real-content render goes straight to the template as ``apply_chat_template`` compiles it, with
the variables it passes (its per-call conversion of the messages to plain data, which ours
already are, costs a third as much as the render itself); the first render of each layout is
also made through ``apply_chat_template`` and any difference, or a ``transformers`` without the
compiled template, falls back to it for good.

Trained: what the model writes when it runs. For an assistant message that is the text after the
prompt the template renders for generating it (the conversation before it with
``add_generation_prompt``), so template text the template puts between that prompt and the
content is trained too (gpt-oss's ``<|channel|>final<|message|>``, Qwen3's empty
``<think>\n\n</think>\n\n``); then the content, and the template text after it up to and
including the first end-of-turn token (so rendered tool calls and ``<|im_end|>`` / ``</s>`` /
``<|eot_id|>`` are trained, the next header is not). A template whose generation prompt is not
how it renders the same conversation as history would train each turn after text the model never
sees at inference; it is refused, naming the two texts (checked once per layout, with
placeholder contents).
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
        self._direct = _compiled(tokenizer)  # (template, variables) or None
        self._direct_for = tokenizer.chat_template  # ... of this template (it may be reset)
        self._checked: set[tuple] = set()  # layouts whose direct render was checked
        # per layout: characters at the end of the template text before each message that the
        # model writes itself (see _heads)
        self._head_sizes: dict[tuple, list[int]] = {}

    def __getstate__(self) -> dict:
        # the compiled template is made again where the renderer is unpickled (spawned workers)
        return {k: v for k, v in self.__dict__.items() if k != "_direct"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._direct = _compiled(self.tokenizer)

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

    def _real(self, messages: list[Message], generation: bool, tools: list | None, key) -> str:
        """The messages rendered with their content: straight through the compiled template
        where that gives what ``apply_chat_template`` gives (see the module doc)."""
        if self._direct is None or tools or self.tokenizer.chat_template is not self._direct_for:
            return self._render(messages, [m.content for m in messages], generation, tools)
        template, variables = self._direct
        hf = self._hf_messages(messages, [m.content for m in messages])
        try:
            out: str | None = template.render(
                messages=hf,
                tools=None,
                documents=None,
                add_generation_prompt=generation,
                **variables,
            )
        except Exception:
            out = None
        if out is None or key not in self._checked:
            # raises the template's error as apply_chat_template reports it
            want = self._render(messages, [m.content for m in messages], generation, tools)
            if out != want:
                self._direct = None
                return want
            self._checked.add(key)
        return out

    def _layout(self, messages: list[Message], generation: bool, tools: list | None) -> tuple:
        """What the template text around the messages depends on (roles, tool calls, names)."""
        return (
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

    def _literals(
        self,
        messages: list[Message],
        generation: bool,
        tools: list | None,
        key: tuple,
        *,
        fresh: bool,
    ) -> list[str]:
        """The template text around the messages: the output with placeholder contents, cut at
        them. It depends only on the messages' layout ``key`` (roles, tool calls, names), so it
        is rendered once per layout (``fresh``: rendered again)."""
        literals = None if fresh else self._skeletons.get(key)
        if literals is None:
            slots = [_SLOT.format(i) for i in range(len(messages))]
            parts = _SLOT_RE.split(self._render(messages, slots, generation, tools))
            literals, order = parts[0::2], [int(x) for x in parts[1::2]]
            if order != list(range(len(messages))):
                moved = [i for i, m in enumerate(messages) if m.role == "system"]
                hint = (
                    " (it moves the system message, as Mistral's puts it into the last user "
                    "turn: give the trajectories no system prompt and keep the instruction out "
                    "of it with render.instruction: turn or prepend)"
                    if any(order[i : i + 1] != [i] for i in moved)
                    else ""
                )
                raise TemplateError(
                    f"the chat template renders messages in order {order}, not each message "
                    f"once{hint}; use a built-in template (llama2, chatml, llama3) or a "
                    "template in render.chat_template that keeps the order"
                )
            if len(self._skeletons) >= 4096:
                self._skeletons.clear()
            self._skeletons[key] = literals
        return literals

    def pieces(
        self, messages: list[Message], *, generation: bool = False, tools: list | None = None
    ) -> list[Piece]:
        key = self._layout(messages, generation, tools)
        real = self._real(messages, generation, tools, key)
        for fresh in (False, True):  # a cached layout first; on a mismatch, rendered anew
            literals = self._literals(messages, generation, tools, key, fresh=fresh)
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
        heads = (
            [0] * len(messages)
            if generation
            else self._heads(messages, tools, key, literals, fresh=fresh)
        )
        out: list[Piece] = []
        cut = 0  # the previous assistant turn's end-of-turn ends here in this literal
        for i, (msg, content) in enumerate(zip(messages, contents, strict=True)):
            lit = literals[i]
            head = max(cut, len(lit) - heads[i])
            out += [
                Piece(lit[:cut], True, True),
                Piece(lit[cut:head], False, True),
                Piece(lit[head:], True, True),  # what the model writes before the content
                Piece(content, msg.train),
            ]
            cut = self._eot_end(literals[i + 1]) if (msg.role == "assistant" and msg.train) else 0
        out += [Piece(literals[-1][:cut], True, True), Piece(literals[-1][cut:], False, True)]
        return [p for p in out if p.text]

    def _heads(
        self,
        messages: list[Message],
        tools: list | None,
        key: tuple,
        literals: list[str],
        *,
        fresh: bool,
    ) -> list[int]:
        """Per message, how many characters at the end of the template text before it the model
        writes itself: for a trained assistant message, the text between the end of its
        generation prompt (the messages before it rendered with ``add_generation_prompt``) and its
        content; 0 for the others. Raises when the generation prompt is not a prefix of the
        training text (a turn would be trained after text it never follows at inference)."""
        heads = None if fresh else self._head_sizes.get(key)
        if heads is not None:
            return heads
        slots = [_SLOT.format(i) for i in range(len(messages))]
        heads = [0] * len(messages)
        for k, msg in enumerate(messages):
            if msg.role != "assistant" or not msg.train:
                continue
            history = _join(literals[: k + 1], slots[:k])
            prompt_key = self._layout(messages[:k], True, tools)
            prompt = _join(
                self._literals(messages[:k], True, tools, prompt_key, fresh=fresh), slots[:k]
            )
            if not history.startswith(prompt):
                raise TemplateError(_prompt_mismatch(k, history, prompt))
            heads[k] = len(history) - len(prompt)
        if len(self._head_sizes) >= 4096:
            self._head_sizes.clear()
        self._head_sizes[key] = heads
        return heads

    def _eot_end(self, text: str) -> int:
        """End offset of the first end-of-turn token in ``text`` (0 if there is none)."""
        hits = [(i, len(t)) for t in self.eot if (i := text.find(t)) >= 0]
        if not hits:
            return 0
        i, n = min(hits)
        return i + n


def _compiled(tokenizer) -> tuple | None:
    """The tokenizer's chat template compiled as ``apply_chat_template`` compiles it, and the
    variables it renders it with (the special tokens); None where ``transformers`` differs.

    In jinja's own sandbox the check of every attribute read (``content.strip``, ``loop.index0``)
    is most of the render's time; for the plain types the template reads (``_memo_types``) its
    answer depends on the type and the attribute's name alone (``isinstance`` tests and a name
    prefix), so here it is memoised for them, in an overlay: the environment ``transformers``
    shares is untouched."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from transformers.utils.chat_template_utils import (
            _compile_jinja_template,
            _plain_template_data,
        )

        source = tokenizer.get_chat_template(None, None)
        compiled = _compile_jinja_template(source)
        variables = _plain_template_data(dict(tokenizer.special_tokens_map))
        if type(compiled.environment) is ImmutableSandboxedEnvironment:
            env = compiled.environment.overlay()
            env.is_safe_attribute = _memoised(env.is_safe_attribute)
            compiled = env.from_string(source)
    except Exception:  # another transformers: apply_chat_template every time
        return None
    return compiled, variables


def _memo_types() -> tuple[type, ...]:
    from jinja2.runtime import LoopContext

    return (str, dict, list, int, LoopContext)


def _memoised(check):
    """jinja's ``is_safe_attribute(obj, attr, value)`` memoised by ``(type(obj), attr)`` for
    objects of exactly the ``_memo_types``."""
    memo_types = frozenset(_memo_types())
    safe: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(obj, attr: str, value) -> bool:
        kind = type(obj)
        if kind not in memo_types:
            return check(obj, attr, value)
        ok = safe.get((kind, attr))
        if ok is None:
            ok = safe[kind, attr] = check(obj, attr, value)
        return ok

    return is_safe_attribute


def _prompt_mismatch(k: int, history: str, prompt: str) -> str:
    history, prompt = (_SLOT_RE.sub(r"<message \1>", t) for t in (history, prompt))
    at = next(
        (i for i, (a, b) in enumerate(zip(history, prompt, strict=False)) if a != b),
        min(len(history), len(prompt)),
    )

    def around(text: str) -> str:
        return repr(text[max(0, at - 30) : at + 30])

    return (
        f"the chat template renders the conversation before message {k} (an assistant turn) "
        "one way as history and another way as the prompt for generating that turn "
        f"(add_generation_prompt): the training text has {around(history)} where the inference "
        f"prompt has {around(prompt)}, so the turn would be trained after text the model never "
        "sees when it runs. Use a built-in template (llama2, chatml, llama3), another "
        "render.observation_role, or a corrected template in render.chat_template"
    )


def _join(literals: list[str], contents: list[str]) -> str:
    out = [literals[0]]
    for c, lit in zip(contents, literals[1:], strict=True):
        out += [c, lit]
    return "".join(out)
