"""The prompt of an episode: task instruction, question with its NAT marker, then the history.

Uses the same code as ``natscale prepare`` (:func:`natscale.data.nat.question_template`,
:func:`natscale.data.render.messages.prompt_messages` and the :class:`Renderer`), so the
evaluated prompt is token for token the prompt the model was trained on, with the class marker
chosen by ``prompt.marker`` (the success / top bucket by default).
"""

from __future__ import annotations

from pathlib import Path

from natscale.config.eval import PromptConfig
from natscale.data.errors import DataError
from natscale.data.nat import format_question, question_template
from natscale.data.prompts import TaskPrompt, load_task_prompt
from natscale.data.render import Renderer, read_chat_template
from natscale.data.render.messages import Message, prompt_messages
from natscale.eval.errors import EvalError


class Prompter:
    """Builds the messages and the rendered prompt (ids or text) of every turn."""

    def __init__(self, cfg: PromptConfig, tokenizer) -> None:
        self.cfg = cfg
        try:
            self.task_prompt = (
                load_task_prompt(cfg.file, cfg.variant, strategy=cfg.strategy.name)
                if cfg.file
                else TaskPrompt()
            )
        except DataError as exc:
            raise EvalError(f"prompt.file: {exc}") from None
        names = cfg.strategy.class_names()
        marker = cfg.marker
        if isinstance(marker, str) and not marker.isdigit():
            if marker not in names:
                raise EvalError(f"prompt.marker: unknown class {marker!r}; classes are {names}")
            self.cls = names.index(marker)
        else:
            self.cls = int(marker)
            if not 0 <= self.cls < len(names):
                raise EvalError(f"prompt.marker: class index {self.cls} out of range {names}")
        self.class_name = names[self.cls]
        self.template = question_template(self.cls, cfg.strategy, self.task_prompt)
        self.tokenizer = tokenizer
        self.tools: list[dict] | None = None  # the tool schemas, with native tool calls
        self.renderer: Renderer | None = None
        if tokenizer is None:  # the scripted backend renders nothing
            return
        if cfg.chat_template is not None:
            try:
                tokenizer.chat_template = read_chat_template(
                    cfg.chat_template, "prompt.chat_template"
                )
            except (OSError, ValueError) as exc:
                raise EvalError(str(exc)) from None
        try:
            self.renderer = Renderer(
                tokenizer,
                cfg.template,
                observation_role=cfg.observation_role,
                end_of_turn=cfg.end_of_turn,
                chat_template_kwargs=cfg.chat_template_kwargs,
            )
        except (ValueError, TypeError) as exc:
            raise EvalError(f"prompt.template: {exc}") from None

    @property
    def end_of_turn(self) -> str:
        return self.renderer.end_of_turn if self.renderer is not None else ""

    def messages(self, question: str, history: list[dict]) -> list[Message]:
        """The prompt messages, then ``history`` (NAT release conversation turns, or OpenAI-style
        messages with native tool calls)."""
        return self.unmarked(format_question(question, self.template)) + [
            Message(
                "assistant" if t["role"] == "assistant" else "observation",
                t["content"],
                bool(t.get("loss", t["role"] == "assistant")),
                tool_calls=t.get("tool_calls"),
                name=t.get("name"),
            )
            for t in history
        ]

    def unmarked(self, question: str) -> list[Message]:
        """The prompt messages with the bare question (no template, no marker): how an episode
        with native tool calls is written, for ``natscale prepare`` to mark again."""
        ack = self.cfg.acknowledgement
        if ack is None:
            ack = self.task_prompt.acknowledgement
        return prompt_messages(
            system=self.cfg.system,
            instruction=self.task_prompt.instruction,
            acknowledgement=ack,
            query=question,
            mode=self.cfg.instruction,
        )

    def ids(self, messages: list[Message]) -> list[int]:
        return self.renderer.generation_prompt(messages, self.tools)

    def text(self, messages: list[Message]) -> str:
        """The rendered prompt as one string (for servers that tokenize it themselves)."""
        pieces = self.renderer.pieces(messages, generation=True, tools=self.tools)
        return "".join(p.text for p in pieces)


def load_eval_tokenizer(path: str | Path):
    from natscale.data.render import load_tokenizer

    root = Path(path)
    if root.is_dir() and not any(
        (root / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise EvalError(
            f"{path}: no tokenizer (tokenizer.json) in the directory; set prompt.tokenizer to the "
            "tokenizer the model was trained with, or pass --data PREPARED_DIR"
        )
    try:
        return load_tokenizer(path)
    except FileNotFoundError:
        raise EvalError(
            f"tokenizer directory {str(path)!r} not found (set prompt.tokenizer, or give a "
            "model directory that holds its tokenizer)"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise EvalError(f"{path}: cannot load a tokenizer: {exc}") from None
