"""The tokenizer's own chat template (``apply_chat_template``) as pieces with train flags.

The template is rendered twice: once with every non-empty content replaced by a unique
placeholder, which cuts the output into template text (literal pieces) and message slots (once
per layout of roles, tool calls, names and empty contents: it does not depend on the content),
and once with the real content to check that the template inserts each content unchanged (or
stripped: Llama-2's ``| trim``; or JSON-escaped: Llama 3's ``tojson`` of a tool result). An
untrained content the template renders otherwise (Qwen3's drops earlier turns' reasoning) is
kept as the template renders it: it is what the model is shown. A conversation with a trained
turn the template renders otherwise (a reasoning splitter writes ``<think>`` apart from the
answer) is cut at each trained turn's generation prompt instead (``_by_prompts``): the last
trained turn's prompt is rendered, and each earlier one is found as its start, checked once per
shape with placeholders (``_prompts_in``), so a conversation costs two renders, not one per
trained turn (a quadratic cost in its length). An empty content gets no placeholder (templates
branch on it), and an assistant's text beside tool calls may be left out by the template (Llama
3's renders the call alone); any other message must be rendered.

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
placeholder contents; with tool calls, whose arguments make nearly every conversation a layout of
its own, once per shape: the layout with stand-in arguments, see ``_prompt_end``).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
from typing import Any

from natscale.data.render.encode import Piece
from natscale.data.render.hf_compiled import compiled_template
from natscale.data.render.hf_text import (
    _INSERTS,
    SLOT,
    SLOT_RE,
    content_parts,
    cut,
    join,
    place,
    positions,
    with_stand_ins,
)
from natscale.data.render.messages import Message
from natscale.data.render.templates import Template
from natscale.data.trajectory import answered_call

EOT_CANDIDATES = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",  # Granite
    "<|call|>",  # gpt-oss: a turn that calls a tool ends here
    "<|return|>",
)


# variables apply_chat_template sets: not for chat_template_kwargs
RESERVED = frozenset(
    {"messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
     "tokenize", "return_dict", "return_tensors", "padding", "truncation", "max_length",
     "chat_template", "tokenizer_kwargs", "return_assistant_tokens_mask", "bos_token",
     "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token",
     "additional_special_tokens"}
)  # fmt: skip


class TemplateError(ValueError):
    pass


# a layout's literals, each cut into (text, trained) parts
_Plan = tuple[tuple[tuple[str, bool], ...], ...]


@dataclasses.dataclass
class _Prompts:
    """Generation prompts found in one render (see ``HFChatTemplate._prompts_in``): the longest
    one's pieces, where each starts, and where each trained turn's prompt ends."""

    pieces: list[Piece]
    starts: list[int]
    ends: dict[int, int]

    def window(self, start: int, end: int) -> list[Piece]:
        """The pieces of the text ``[start, end)`` (pieces cut at both ends)."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        out = []
        while i < len(self.pieces) and self.starts[i] < end:
            p, at = self.pieces[i], self.starts[i]
            a, b = max(start - at, 0), min(end - at, len(p.text))
            if b > a:
                out.append(p if (a, b) == (0, len(p.text)) else p._replace(text=p.text[a:b]))
            i += 1
        return out


def _split(text: str) -> tuple[list[str], list[int]]:
    """A render with placeholders cut into its literals and the placeholders' messages."""
    parts = SLOT_RE.split(text)
    return parts[0::2], [int(x) for x in parts[1::2]]


class HFChatTemplate(Template):
    name = "hf"

    def __init__(
        self,
        tokenizer,
        observation_role: str = "user",
        end_of_turn: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(observation_role)
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat_template; use template: llama2, chatml or llama3"
            )
        self.tokenizer = tokenizer
        # more variables for the template (apply_chat_template's **kwargs: enable_thinking)
        self.kwargs = dict(kwargs or {})
        taken = sorted(RESERVED & set(self.kwargs))
        if taken:
            raise TemplateError(
                f"chat_template_kwargs: {taken} are set by natscale itself (messages, tools, "
                "add_generation_prompt and the special tokens); leave them out"
            )
        if end_of_turn is not None:
            self.eot = (end_of_turn,)
        else:
            found = [t for t in (tokenizer.eos_token, *EOT_CANDIDATES) if t]
            vocab = tokenizer.get_vocab()
            self.eot = tuple(t for t in dict.fromkeys(found) if t in vocab)
        self.end_of_turn = self.eot[0] if self.eot else ""
        # whether the template renders `tools`, by the messages' roles (its layout may depend on them)
        self._tool_support: dict[tuple, bool] = {}
        # the template text around the messages, by layout (see _skeleton)
        self._skeletons: dict[tuple, list[str]] = {}
        self._direct = compiled_template(tokenizer)  # (template, variables) or None
        self._direct_for = tokenizer.chat_template  # ... of this template (it may be reset)
        self._checked: set[tuple] = set()  # layouts whose direct render was checked
        # per layout and train flags: its literals cut into trained and untrained text
        self._plans: dict[tuple, _Plan] = {}
        self._tails: dict[tuple, tuple[int | None, str] | None] = {}  # see _shape_tail
        self._drops_call_text: bool | None = None
        self._apart: set[tuple] = set()  # layouts rendered by _by_prompts
        self._prompt_tails: dict[tuple, dict] = {}  # see _prompt_tail
        self._check_turns_end()
        if end_of_turn is None and len(self.eot) > 1:
            self.end_of_turn = self._closing_token() or self.end_of_turn

    def __getstate__(self) -> dict:
        # the compiled template is made again where the renderer is unpickled (spawned workers)
        return {k: v for k, v in self.__dict__.items() if k != "_direct"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._direct = compiled_template(self.tokenizer)

    def _hf_messages(self, messages: list[Message], contents: list[str]) -> list[dict]:
        """OpenAI-style messages; a call's ``id`` (Mistral's templates require them) is kept,
        and an observation gets the id it answers as ``tool_call_id``: its own, else the next
        pending call's (:func:`answered_call`; ValueError for an id that answers no call)."""
        out, pending = [], []
        for msg, content in zip(messages, contents, strict=True):
            m = {"role": self.role(msg), "content": content}
            if msg.tool_calls:
                m["tool_calls"] = []
                for c in msg.tool_calls:
                    call = {"name": c["name"], "arguments": c.get("arguments")}
                    m["tool_calls"].append({"type": "function", "function": call})
                    if c.get("id"):
                        m["tool_calls"][-1]["id"] = c["id"]
                        pending.append(c["id"])
            if msg.role == "observation":
                if msg.name:
                    m["name"] = msg.name
                answered = answered_call(pending, msg.tool_call_id)
                if answered is not None:
                    m["tool_call_id"] = answered
            out.append(m)
        return out

    def _check_turns_end(self) -> None:
        """Raises when the template writes none of the end-of-turn tokens after an assistant
        turn (an Alpaca-style ``### {role}:\n{content}\n\n`` writes no EOS): a turn would be
        trained without one, and the model would never learn to end its turn."""
        probe = [Message("user", "q"), Message("assistant", "a", True), Message("user", "q")]
        try:
            text = self._render(probe, [SLOT.format(i) for i in range(3)], False)
        except TemplateError:  # a template that needs more to render: rendering reports it
            return
        after = text.partition(SLOT.format(1))[2].partition(SLOT.format(2))[0]
        if SLOT.format(2) not in text or any(t in after for t in self.eot):
            return
        looked = f"{list(self.eot)}" if self.eot else "none: the tokenizer has no EOS token"
        name = getattr(self.tokenizer, "name_or_path", "") or "the tokenizer"
        as_text = [t for t in EOT_CANDIDATES if t in after]
        hint = (
            f" (it writes {as_text[0]} as text, a token the tokenizer lacks: "
            "render.add_missing_special_tokens: true adds it)"
            if as_text
            else ""
        )
        raise TemplateError(
            f"the chat template of {name} writes {after!r} between an assistant turn and the "
            f"next message, none of the end-of-turn tokens (looked for {looked}), so no turn "
            "would be trained to end and the model would not learn to stop; set "
            "render.end_of_turn (prompt.end_of_turn for natscale eval) to the text the template "
            f"writes right after an assistant turn{hint}, or use a chat template that closes "
            "assistant turns with a token"
        )

    def _closing_token(self) -> str | None:
        """The end-of-turn token the template closes an assistant turn with, where the
        tokenizer has several (Gemma's ``<end_of_turn>``, not its EOS ``<eos>``): what the model
        learns to end a turn with, so what generation stops at."""
        probe = [Message("user", "q"), Message("assistant", "a", True), Message("user", "q")]
        try:
            text = self._render(probe, [SLOT.format(i) for i in range(3)], False)
        except TemplateError:
            return None
        after = text.partition(SLOT.format(1))[2]
        hits = [(i, t) for t in self.eot if (i := after.find(t)) >= 0]
        return min(hits)[1] if hits else None

    def drops_tool_call_text(self) -> bool:
        """Whether the template leaves out the text of an assistant message that calls a tool
        (Llama 3's renders the call alone)."""
        if self._drops_call_text is None:
            probe = [
                Message("user", "question"),
                Message("assistant", "text", True, [{"name": "f", "arguments": {}}]),
            ]
            try:
                self._drops_call_text = SLOT.format(1) not in self._render(
                    probe, [SLOT.format(0), SLOT.format(1)], False
                )
            except TemplateError:  # a template that needs more (ids, tools) to render a call
                self._drops_call_text = False
        return self._drops_call_text

    def renders_tools(self, messages: list[Message], tools: list) -> bool:
        """True when the chat template's output changes with ``tools`` (it renders them)."""
        key = tuple(self.role(m) for m in messages)
        if key not in self._tool_support:
            slots = [SLOT.format(i) for i in range(len(messages))]
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
        hf_messages = self._hf_messages(messages, contents)  # its ValueError is the data's
        try:
            return self.tokenizer.apply_chat_template(
                hf_messages,
                tools=tools,
                tokenize=False,
                add_generation_prompt=generation,
                **self.kwargs,
            )
        except Exception as exc:  # jinja raises its own errors (e.g. roles must alternate)
            calls = [c for m in messages for c in m.tool_calls or ()]
            hint = (
                "give every tool call an id in the data (OpenAI tool_calls[].id: the template "
                "reads them), "
                if any("id" not in c for c in calls) and "'id'" in str(exc)
                else ""
            )
            raise TemplateError(
                f"the tokenizer's chat template failed: {exc}; {hint}set render.observation_role "
                "to a role it accepts, or use a built-in template (llama2, chatml, llama3)"
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
                **self.kwargs,
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
        """What the template text around the messages depends on (roles, tool calls, names,
        which contents are empty)."""
        return (
            generation,
            json.dumps(tools, sort_keys=True) if tools else None,
            *(
                (
                    self.role(m),
                    (m.name, m.tool_call_id) if m.role == "observation" else None,
                    json.dumps(m.tool_calls, sort_keys=True) if m.tool_calls else None,
                    not m.content,
                )
                for m in messages
            ),
        )

    def _skeleton(
        self,
        messages: list[Message],
        generation: bool,
        tools: list | None,
        key: tuple,
        *,
        fresh: bool,
    ) -> tuple[list[str], list[int]]:
        """The template text around the messages: the output with a placeholder for each
        non-empty content, cut at them, and the message of each placeholder in output order. It
        depends only on the layout ``key``, so it is rendered once per layout (``fresh``: again).
        An empty content has no placeholder (templates branch on it: Qwen3 puts a newline before
        a tool call only after text), and neither has the text of an assistant message with tool
        calls that the template leaves out (Llama 3's renders the call alone)."""
        cached = None if fresh else self._skeletons.get(key)
        if cached is None:
            marks = [SLOT.format(i) if m.content else "" for i, m in enumerate(messages)]
            parts = SLOT_RE.split(self._render(messages, marks, generation, tools))
            literals, slots = parts[0::2], [int(x) for x in parts[1::2]]
            if any(b <= a for a, b in itertools.pairwise(slots)):
                moved = any(m.role == "system" for m in messages)
                hint = (
                    " (it moves the system message, as Mistral's puts it into the last user "
                    "turn: give the trajectories no system prompt and keep the instruction out "
                    "of it with render.instruction: turn or prepend)"
                    if moved
                    else ""
                )
                raise TemplateError(
                    f"the chat template renders messages in order {slots}, not each message "
                    f"once{hint}; use a built-in template (llama2, chatml, llama3) or a "
                    "template in render.chat_template that keeps the order"
                )
            lost = [
                i
                for i, m in enumerate(messages)
                if m.content and i not in slots and not (m.role == "assistant" and m.tool_calls)
            ]
            if lost:
                raise TemplateError(
                    "the chat template does not render the text of "
                    + ", ".join(f"message {i} ({messages[i].role})" for i in lost)
                    + "; use a built-in template (llama2, chatml, llama3) or a template in "
                    "render.chat_template that renders it"
                )
            if len(self._skeletons) >= 4096:
                self._skeletons.clear()
            cached = self._skeletons[key] = (literals, slots)
        return cached

    def pieces(
        self, messages: list[Message], *, generation: bool = False, tools: list | None = None
    ) -> list[Piece]:
        key = self._layout(messages, generation, tools)
        real = self._real(messages, generation, tools, key)
        # a cached layout first; on a mismatch, rendered anew (unless the layout is one whose
        # trained turns the template renders apart from their content: see _by_prompts)
        trains = not generation and any(m.train for m in messages)
        apart = trains and key in self._apart
        found = None
        for fresh in (False,) if apart else (False, True):
            literals, slots = self._skeleton(messages, generation, tools, key, fresh=fresh)
            found = place(
                literals,
                [messages[i].content for i in slots],
                real,
                [messages[i].train and not generation for i in slots],  # a prompt: as shown
            )
            if found is not None:
                break
        if found is None or found[1]:
            # not placed, or an untrained content rendered the template's own way, which the
            # prompt of a later turn may render another way (Qwen3's keeps the reasoning of
            # turns after the last user message): each trained turn's real prompt is checked
            # against the real history
            if trains:
                if len(self._apart) >= 4096:
                    self._apart.clear()
                self._apart.add(key)
                return self._by_prompts(messages, tools, real)
            if found is None:
                raise TemplateError(
                    "the chat template changes the template text around the messages with "
                    "their content (beyond a content-dependent rendering of the content "
                    "itself); use a built-in template (llama2, chatml, llama3) or a template "
                    "in render.chat_template that keeps the text as it is"
                )
        placed = found[0]
        plan = self._plan(messages, generation, tools, key, literals, slots, fresh=fresh)
        out: list[Piece] = []
        for j, parts in enumerate(plan):
            out += [Piece(text, trained, True) for text, trained in parts]
            if j < len(slots) and placed[j]:
                out.append(Piece(placed[j], messages[slots[j]].train))
        return out

    def _by_prompts(self, messages: list[Message], tools: list | None, real: str) -> list[Piece]:
        """The pieces of a conversation whose trained turns the template does not render from
        their content alone (Qwen3's writes a turn's ``<think>`` block apart from its answer):
        each trained turn is what follows its own generation prompt in the real render, up to
        and including the first end-of-turn token after its content; the rest is the untrained
        text of those prompts (and of the conversation after the last trained turn).

        Every part of a trained turn's content (its text outside and inside ``<think>`` tags)
        must be in what the template renders for it, in order: a template that drops the
        reasoning of a turn that later turns follow (Qwen3's, before the last user message)
        is refused with the way out, ``render.turns: each``."""
        trained = [k for k, m in enumerate(messages) if m.train]
        other = [k for k in trained if messages[k].role != "assistant"]
        if other:
            k = other[0]
            raise TemplateError(
                f"the chat template changes the text of message {k} ({messages[k].role}, "
                "trained); use a built-in template (llama2, chatml, llama3) or a template in "
                "render.chat_template that keeps the text as it is"
            )
        history = [dataclasses.replace(m, train=False) for m in messages]
        try:
            found = self._prompts_in(history, trained, tools, real)
        except Exception:  # rendered turn by turn below, which reports it as it arises
            found = None
        out: list[Piece] = []
        pos = 0
        for k in trained:
            end = found.ends.get(k) if found is not None else None
            if end is not None:
                out += found.window(pos, end)
            else:
                prompt = self.pieces(history[:k], generation=True, tools=tools)
                text = "".join(p.text for p in prompt)
                if not real.startswith(text):
                    raise TemplateError(_prompt_mismatch(k, real, text))
                out += cut(prompt, pos)
                end = len(text)
            written, pos = self._written(messages, k, real, end, tools), end
            out += written
            pos += sum(len(p.text) for p in written)
        rest = real[pos:]  # untrained: template text, or the rest of the conversation
        if trained[-1] < len(messages) - 1:
            try:
                out += cut(self.pieces(history, tools=tools), pos)
                rest = ""
            except TemplateError:  # rendered apart from its content (a last assistant turn)
                pass  # as template text: no trained token follows it, so it changes no loss
        out.append(Piece(rest, False, True))
        return [p for p in out if p.text]

    def _prompts_in(
        self, history: list[Message], trained: list[int], tools: list | None, real: str
    ) -> _Prompts | None:
        """The generation prompts of the ``trained`` turns of ``history`` (untrained copies of
        the messages) as ``_by_prompts`` cuts them from the real render ``real``, found without
        rendering each: the last trained turn's prompt is rendered (with its content, once) and
        must be the start of ``real`` with every content in it as it is (stripped or escaped);
        an earlier turn's prompt is the start of that one, up to the text after its own last
        content (:meth:`_prompt_tail`, checked once per shape). None: each prompt is rendered.

        Such a prompt is what rendering it gives as long as the template renders the prompt the
        way the placeholders show it, which is what a conversation the placeholder layout
        places is trained on too (the module doc): an untrained content the last prompt renders
        otherwise (Qwen3's dropped reasoning), a prompt that is not the start of the last one
        with placeholders, or a last content the shorter prompt would place otherwise leaves
        the turn to its own render."""
        last = trained[-1]
        key = self._layout(history[:last], True, tools)
        prompt = self._real(history[:last], True, tools, key)
        if not real.startswith(prompt):
            return None
        literals, slots = self._skeleton(history[:last], True, tools, key, fresh=False)
        contents = [history[i].content for i in slots]
        found = place(literals, contents, prompt, [False] * len(slots))
        if found is None or found[1]:
            return None
        placed = found[0]
        # the prompt's pieces as pieces() makes them for a generation prompt, and where each
        # starts; where each content ends
        pieces: list[Piece] = []
        starts: list[int] = []
        ends: list[int] = []
        at = 0
        for j, lit in enumerate(literals):
            if lit:
                pieces.append(Piece(lit, False, True))
                starts.append(at)
            at += len(lit)
            if j < len(slots):
                if placed[j]:
                    pieces.append(Piece(placed[j], False))
                    starts.append(at)
                at += len(placed[j])
                ends.append(at)
        out = _Prompts(pieces, starts, {last: len(prompt)})
        earlier = trained[:-1]
        if not earlier:
            return out
        shape = with_stand_ins(history)
        tails = self._prompt_tails_of(shape, last, tools)
        ref = self._prompt_ref(tails, shape, tools)
        if ref is None or ref[1] != slots:
            return out  # the shape's placeholders are not the conversation's
        for k in earlier:
            tail = self._prompt_tail(tails, shape, k, tools)
            if tail is None:
                continue
            n, text = tail
            if not literals[n].startswith(text):  # the real text after its last content
                continue
            if n == 0:
                out.ends[k] = len(text)
                continue
            # the prompt of turn k ends `text` after its last content; place() on it must put
            # that content where it is in the longer prompt (the first way it is inserted that
            # the text follows)
            end = ends[n - 1] + len(text)
            start = ends[n - 1] - len(placed[n - 1])
            first = next(
                (
                    t
                    for insert in _INSERTS
                    if prompt.startswith(t := insert(contents[n - 1]), start, end)
                    and prompt.startswith(text, start + len(t), end)
                ),
                None,
            )
            if first == placed[n - 1]:
                out.ends[k] = end
        return out

    def _prompt_tails_of(self, shape: list[Message], last: int, tools: list | None) -> dict:
        """The cache of :meth:`_prompt_tail` for a conversation's shape (its messages with
        stand-ins, see :func:`with_stand_ins`) and its last trained turn ``last``."""
        key = (self._layout(shape, False, tools), last)
        tails = self._prompt_tails.get(key)
        if tails is None:
            if len(self._prompt_tails) >= 4096:
                self._prompt_tails.clear()
            tails = self._prompt_tails[key] = {"last": last}
        return tails

    def _prompt_tail(
        self, tails: dict, shape: list[Message], k: int, tools: list | None
    ) -> tuple[int, str] | None:
        """When the generation prompt of ``shape[:k]`` is, with placeholders, the start of the
        one of ``shape[:last]`` (``last``: the conversation's last trained turn, in ``tails``),
        the number of placeholders in it and its text after the last of them; else None."""
        if k in tails:
            return tails[k]
        found = None
        ref = self._prompt_ref(tails, shape, tools)
        try:
            lits, slots = _split(self._render_marked(shape[:k], tools))
        except TemplateError:  # rendered turn by turn, which reports it
            pass
        else:
            ref_lits, ref_slots = ref or ([], [])
            n = len(slots)
            if (
                n < len(ref_lits)
                and slots == ref_slots[:n]
                and lits[:-1] == ref_lits[:n]
                and ref_lits[n].startswith(lits[-1])
            ):
                found = (n, lits[-1])
        tails[k] = found
        return found

    def _prompt_ref(
        self, tails: dict, shape: list[Message], tools: list | None
    ) -> tuple[list[str], list[int]] | None:
        """The generation prompt of ``shape[:last]`` with placeholders, cut at them (None: the
        template fails on the shape)."""
        if "ref" not in tails:
            try:
                tails["ref"] = _split(self._render_marked(shape[: tails["last"]], tools))
            except TemplateError:
                tails["ref"] = None
        return tails["ref"]

    def _render_marked(self, messages: list[Message], tools: list | None) -> str:
        """The generation prompt of ``messages`` with a placeholder for each non-empty content."""
        marks = [SLOT.format(i) if m.content else "" for i, m in enumerate(messages)]
        return self._render(messages, marks, True, tools)

    def _written(
        self, messages: list[Message], k: int, real: str, start: int, tools: list | None
    ) -> list[Piece]:
        """Trained pieces of assistant message ``k``, whose generation prompt ends at ``start``
        in ``real``: template text and the parts of its content, up to and including the first
        end-of-turn token after the prompt (the parts must lie before it: a part found only in
        a later turn is not this turn's)."""
        msg = messages[k]
        pieces, at = [], start
        limit = start + (self._eot_end(real[start:]) or len(real) - start)
        for part in content_parts(msg.content):
            i = real.find(part, at, limit)
            if i < 0:
                # would the turn keep it as the last of its own example (render.turns: each)?
                alone = (
                    k == len(messages) - 1
                    or part
                    in self._render(
                        messages[: k + 1], [m.content for m in messages[: k + 1]], False, tools
                    )[start:]
                )
                raise TemplateError(_lost_part(messages, k, part, real[start:limit], alone))
            pieces += [Piece(real[at:i], True, True), Piece(part, True)]
            at = i + len(part)
        end = at + self._eot_end(real[at:limit])
        _check_written(msg, k, real[start:end])
        pieces.append(Piece(real[at:end], True, True))
        return [p for p in pieces if p.text]

    def _plan(
        self,
        messages: list[Message],
        generation: bool,
        tools: list | None,
        key: tuple,
        literals: list[str],
        slots: list[int],
        *,
        fresh: bool,
    ) -> _Plan:
        """Which template text of a layout is trained (see the module doc), as its literals cut
        into (text, trained) parts. Raises when a trained turn's generation prompt is not how
        the template renders the same conversation as history."""
        plan_key = (key, *(m.train for m in messages))  # the layout and which turns train
        plan = None if fresh else self._plans.get(plan_key)
        if plan is not None:
            return plan
        text, starts, where = positions(literals, slots)
        trained: list[tuple[int, int]] = []  # template text the model writes, in `text`
        shape = None  # with tool calls: the conversation's shape and its layout (_prompt_end)
        if not fresh and not generation and any(m.tool_calls for m in messages):
            shaped = with_stand_ins(messages)
            shape = (shaped, self._layout(shaped, False, tools))
        for k, msg in enumerate(messages):
            if generation or msg.role != "assistant" or not msg.train:
                continue
            later = next((where[i][0] for i in slots if i > k), len(text))
            before = where[k][0] if k in where else later  # the history this turn follows
            prompt = self._prompt_end(
                messages, k, tools, text, where, before, shape=shape, fresh=fresh
            )
            after = where[k][1] if k in where else prompt
            end = after + self._eot_end(text[after:later])
            _check_written(msg, k, text[prompt:end])
            trained += [(prompt, where[k][0] if k in where else prompt), (after, end)]
        spans = sorted(span for span in trained if span[1] > span[0])  # disjoint
        span_starts = [a for a, _ in spans]
        edges = sorted({x for span in spans for x in span})

        def is_trained(a: int, b: int) -> bool:  # [a, b) lies inside a span or outside all
            i = bisect.bisect_right(span_starts, a) - 1
            return i >= 0 and b <= spans[i][1]

        parts = []
        for j, lit in enumerate(literals):
            a, b = starts[j], starts[j] + len(lit)
            inner = edges[bisect.bisect_right(edges, a) : bisect.bisect_left(edges, b)]
            cuts = [a, *inner, b]
            parts.append(
                tuple((text[x:y], is_trained(x, y)) for x, y in itertools.pairwise(cuts) if y > x)
            )
        plan = tuple(parts)
        if len(self._plans) >= 4096:
            self._plans.clear()
        self._plans[plan_key] = plan
        return plan

    def _prompt_end(
        self,
        messages: list[Message],
        k: int,
        tools: list | None,
        text: str,
        where: dict[int, tuple[int, int]],
        before: int,
        *,
        shape: tuple[list[Message], tuple] | None,
        fresh: bool,
    ) -> int:
        """Where the generation prompt of ``messages[:k]`` ends in the history ``text``; raises
        when it is not the start of the history before message ``k`` (which ends at
        ``before``). Tool calls' arguments and ids make nearly every conversation a layout of its
        own; such a prompt is checked once per ``shape`` (the messages with stand-ins for
        them, see :func:`with_stand_ins`, and their layout; None: render the prompt) and found in
        ``text`` by its text after its last message, and rendered itself only when that text is
        not there."""
        if shape is not None and any(m.tool_calls for m in messages[:k]):
            found = self._shape_tail(shape, k, tools)
            if found is not None and (found[0] is None or found[0] in where):
                last, tail = found
                pos = where[last][1] if last is not None else 0
                if pos + len(tail) <= before and text.startswith(tail, pos):
                    return pos + len(tail)
        lits, slots = self._skeleton(
            messages[:k], True, tools, self._layout(messages[:k], True, tools), fresh=fresh
        )
        prompt = join(lits, [SLOT.format(i) for i in slots])
        if len(prompt) > before or not text.startswith(prompt):
            raise TemplateError(_prompt_mismatch(k, text[:before], prompt))
        return len(prompt)

    def _shape_tail(
        self, shape: tuple[list[Message], tuple], k: int, tools: list | None
    ) -> tuple[int | None, str] | None:
        """For a conversation's ``(shape, its layout)``: when its turn ``k``'s generation prompt
        is the start of its history, the prompt's last placeholder (None: none) and its text
        after it."""
        shape, layout = shape
        key = (layout, k)
        if key not in self._tails:
            found = None
            try:
                lits, slots = self._skeleton(shape, False, tools, key[0], fresh=False)
                prompt_key = self._layout(shape[:k], True, tools)
                p_lits, p_slots = self._skeleton(shape[:k], True, tools, prompt_key, fresh=False)
            except TemplateError:  # the exact path reports it
                pass
            else:
                text, _, where = positions(lits, slots)
                prompt = join(p_lits, [SLOT.format(i) for i in p_slots])
                later = next((where[i][0] for i in slots if i > k), len(text))
                before = where[k][0] if k in where else later
                if len(prompt) <= before and text.startswith(prompt):
                    found = (p_slots[-1] if p_slots else None, p_lits[-1])
            if len(self._tails) >= 4096:
                self._tails.clear()
            self._tails[key] = found
        return self._tails[key]

    def _eot_end(self, text: str) -> int:
        """End offset of the first end-of-turn token in ``text`` (0 if there is none)."""
        hits = [(i, len(t)) for t in self.eot if (i := text.find(t)) >= 0]
        if not hits:
            return 0
        i, n = min(hits)
        return i + n


def _check_written(msg: Message, k: int, written: str) -> None:
    """Raises when ``written``, what assistant message ``k`` is trained on, is empty or lacks
    one of its tool calls."""
    if not written:
        raise TemplateError(
            f"the chat template renders message {k} (an assistant turn) without its text "
            "and no end-of-turn token follows its prompt, so nothing of it would be "
            "trained; set render.end_of_turn to the token that ends a turn"
        )
    missing = [c["name"] for c in msg.tool_calls or () if c["name"] not in written]
    if missing:
        raise TemplateError(
            f"the chat template does not render the tool call(s) {missing} of message {k} "
            "(an assistant turn), so the model would learn the turn without them; use a "
            "template in render.chat_template that renders them"
        )


def _prompt_mismatch(k: int, history: str, prompt: str) -> str:
    history, prompt = (SLOT_RE.sub(r"<message \1>", t) for t in (history, prompt))
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
        "render.observation_role, render.turns: each (each turn in an example of its own, "
        "after the history as the prompt shows it; enough where the history differs only "
        "for turns that later turns follow), or a corrected template in render.chat_template"
    )


def _lost_part(messages: list[Message], k: int, part: str, rendered: str, alone: bool) -> str:
    """``alone``: whether the template keeps ``part`` where the turn ends the conversation."""
    thinking = (
        "</think>" in messages[k].content and part in messages[k].content.split("</think>")[0]
    )
    what = "leaves out the reasoning (<think>) of" if thinking else "changes the text of"
    why = (
        "The template leaves out the reasoning of turns that later turns follow (it drops "
        "earlier turns' <think> blocks from the history): set render.turns: each, which makes "
        "one example of each trained turn after the history as the template shows it"
        if thinking and k < len(messages) - 1 and alone
        else "Use a built-in template (llama2, chatml, llama3) or a template in "
        "render.chat_template that keeps the text"
    )
    return (
        f"the chat template {what} message {k} (an assistant turn, trained): "
        f"{part[:60]!r} is not in what it renders for the turn ({rendered[:120]!r}), so the "
        f"model would learn the turn without it. {why}"
    )
