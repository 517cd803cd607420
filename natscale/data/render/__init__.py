"""Rendering messages through a chat template into token ids and a per-token train mask.

    tok = load_tokenizer("examples/tokenizer")
    r = Renderer(tok, "llama2")
    enc = r.encode(messages)            # Encoded(ids int32 [n], mask bool [n])
    ids = r.generation_prompt(messages) # prompt ids for generating the next assistant turn

Templates: ``hf`` (the tokenizer's chat template), ``llama2`` (the paper's), ``chatml``,
``llama3``; ``auto`` picks ``hf`` when the tokenizer has a chat template, else ``llama2``.
"""

from __future__ import annotations

import os

from natscale.data.render.encode import Encoded, Piece, PieceEncoder
from natscale.data.render.hf import HFChatTemplate, TemplateError
from natscale.data.render.messages import Message, prompt_messages, trajectory_messages
from natscale.data.render.paper import encode_paper
from natscale.data.render.templates import BUILTIN, Template
from natscale.data.render.tools import with_tools_in_system

TEMPLATES = ("auto", "hf", *BUILTIN)


# a tokenizer folder holds one of these vocabulary files (tokenizer.json for a fast tokenizer)
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def load_tokenizer(path: str | os.PathLike):
    """A local fast tokenizer (never downloads)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from natscale.model.hf_config import StrictDataclassError, config_problem

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(path)!r} not found")
    if not any((folder / name).is_file() for name in VOCAB_FILES):
        held = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"tokenizer directory {str(path)!r} holds no tokenizer: expected tokenizer.json "
            f"(or {', '.join(VOCAB_FILES[1:])}) with tokenizer_config.json, found "
            f"{', '.join(held) if held else 'nothing'}; point render.tokenizer at the folder "
            "of the model's tokenizer (e.g. the model folder)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer directory {str(path)!r} cannot be loaded: {exc}") from exc
    except (TypeError, StrictDataclassError) as exc:  # the folder's config.json (module hf_config)
        raise ValueError(
            f"tokenizer directory {str(path)!r} cannot be loaded: {folder / 'config.json'}: "
            f"{config_problem(exc)}; correct that file or point at a folder with a usable one"
        ) from exc
    if not getattr(tok, "is_fast", False):
        raise TypeError(f"{path}: not a fast tokenizer (needs tokenizer.json)")
    return tok


def read_chat_template(path: str | os.PathLike, field: str) -> str:
    """A chat template file (Jinja, as transformers' ``chat_template.jinja``), compiled as
    ``apply_chat_template`` compiles it to check it. ``field`` names the setting in errors."""
    from pathlib import Path

    import jinja2

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{field}: chat template file {str(path)!r} not found")
    text = file.read_text(encoding="utf-8")
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # another transformers: its first render reports errors
        return text
    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{field}: {path}, line {exc.lineno}: {exc.message}") from None
    return text


def resolve_template(tokenizer, template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if template == "auto":
        return "hf" if getattr(tokenizer, "chat_template", None) else "llama2"
    return template


def missing_tokens(tokenizer, template: str) -> list[str]:
    """Special tokens a built-in ``template`` needs that ``tokenizer`` lacks."""
    if template not in BUILTIN:
        return []
    vocab = tokenizer.get_added_vocab()
    return [t for t in BUILTIN[template].required_tokens if t not in vocab]


def add_missing_tokens(tokenizer, template: str) -> list[str]:
    """Add the template's missing special tokens to ``tokenizer`` (grows its vocabulary:
    the model's embeddings must be resized to ``len(tokenizer)``). Returns what was added."""
    missing = missing_tokens(tokenizer, template)
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return missing


class Renderer:
    """Messages -> (ids, train mask) through one template; picklable for worker processes."""

    def __init__(
        self,
        tokenizer,
        template: str = "auto",
        *,
        observation_role: str = "user",
        end_of_turn: str | None = None,
        paper_compat: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> None:
        """``chat_template_kwargs``: more variables for the tokenizer's chat template
        (``apply_chat_template(**kwargs)``, e.g. Qwen3's ``enable_thinking``); ``hf`` only."""
        self.name = resolve_template(tokenizer, template)
        self.paper_compat = paper_compat
        if paper_compat and self.name != "llama2":
            raise TemplateError(
                f"render.paper_compat reproduces the paper's FastChat llama-2 preprocessing; it "
                f"needs template: llama2, not {self.name!r}"
            )
        self.eos_id = tokenizer.eos_token_id
        missing = missing_tokens(tokenizer, self.name)
        if missing:
            raise TemplateError(
                f"template {self.name!r} needs special tokens {missing} that the tokenizer lacks; "
                "pick another template or set render.add_missing_special_tokens: true "
                "(the model's embeddings are then resized)"
            )
        if self.name == "hf":
            self.template: Template = HFChatTemplate(
                tokenizer, observation_role, end_of_turn, chat_template_kwargs
            )
        elif chat_template_kwargs:
            raise TemplateError(
                f"chat_template_kwargs are variables of the tokenizer's chat template; template "
                f"{self.name!r} is natscale's own and reads none (use template: hf)"
            )
        else:
            self.template = BUILTIN[self.name](observation_role)
            if end_of_turn is not None and end_of_turn != self.template.end_of_turn:
                raise TemplateError(
                    f"render.end_of_turn (prompt.end_of_turn for natscale eval) "
                    f"{end_of_turn!r} is read by template: hf only; template {self.name!r} is "
                    f"natscale's own and closes a turn with {self.template.end_of_turn!r} "
                    "(remove end_of_turn, or use template: hf)"
                )
        self.encoder = PieceEncoder(tokenizer)

    @property
    def end_of_turn(self) -> str:
        return self.template.end_of_turn

    def pieces(
        self, messages: list[Message], *, generation: bool = False, tools: list | None = None
    ) -> list[Piece]:
        """``tools``: OpenAI-form tool schemas (:mod:`.tools`): through the chat template when
        it renders them, else in the system prompt."""
        if tools and not self.template.renders_tools(messages, tools):
            messages, tools = with_tools_in_system(messages, tools), None
        if tools:
            return self.template.pieces(messages, generation=generation, tools=tools)
        return self.template.pieces(messages, generation=generation)

    def encode(self, messages: list[Message], tools: list | None = None) -> Encoded:
        if self.paper_compat:  # per-segment tokenisation (natscale.data.render.paper)
            return encode_paper(self.encoder, with_tools_in_system(messages, tools), self.eos_id)
        return self.encoder.encode(self.pieces(messages, tools=tools))

    def encode_batch(self, batch: list[list[Message]]) -> list[Encoded]:
        return self.encoder.encode_batch([self.pieces(m) for m in batch])

    def generation_prompt(self, messages: list[Message], tools: list | None = None) -> list[int]:
        """Token ids of ``messages`` followed by the assistant header, ready for generate()."""
        return self.encoder.encode(self.pieces(messages, generation=True, tools=tools)).ids.tolist()


__all__ = [
    "TEMPLATES",
    "Encoded",
    "Message",
    "Piece",
    "Renderer",
    "TemplateError",
    "add_missing_tokens",
    "load_tokenizer",
    "missing_tokens",
    "prompt_messages",
    "read_chat_template",
    "resolve_template",
    "trajectory_messages",
]
