"""``natscale eval`` config: model and backend, questions, prompt wording, tools, loop, sampling.

Relative paths are taken from the working directory. Every section forbids unknown keys. With
``--data PREPARED_DIR`` the ``prompt`` section defaults to the wording that dataset was prepared
with (see :func:`natscale.eval.prepared.prompt_defaults`); the config and ``--set`` still
override any field. See ``examples/configs/eval_math.yaml``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from natscale.config.paths import PathText
from natscale.config.prepare import StrategyConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptConfig(_Strict):
    file: str | None = Field(None, description="task prompt file (instruction, templates)")
    variant: str | None = Field(None, description="variant of a paper-layout prompt file")
    tokenizer: str | None = Field(None, description="tokenizer directory; default the model's")
    template: Literal["auto", "hf", "llama2", "chatml", "llama3"] = "auto"
    instruction: Literal["turn", "prepend", "system"] = "turn"
    acknowledgement: str | None = None
    system: str = ""
    observation_role: str = "user"
    end_of_turn: str | None = None
    chat_template: str | None = Field(
        None, description="Jinja file that replaces the tokenizer's chat template"
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="more variables for the chat template (e.g. {enable_thinking: false})"
    )
    response_template: str | None = Field(
        None,
        description="what reads the model's tool calls (loop.protocol: tool_calls): a bundled "
        "name (natscale.agent.response_templates) or a JSON file holding a transformers "
        "response template; default the tokenizer's, else the first bundled one that reads "
        "back the calls the chat template writes",
    )
    strategy: StrategyConfig = StrategyConfig()
    marker: str | int = Field(
        0, description="class whose marker the question carries: name or index (0 = success)"
    )


class ToolsConfig(_Strict):
    names: list[str] = Field(default_factory=lambda: ["calculate"])
    corpus: str | None = Field(None, description="search corpus: JSONL of {title, text}")
    user: dict[str, str] = Field(default_factory=dict, description="name -> 'module:function'")
    timeout_s: float = Field(10.0, gt=0)
    schemas: str | list[dict[str, Any]] | None = Field(
        None,
        description="OpenAI tool schemas that replace the tools' own (loop.protocol: "
        "tool_calls), e.g. the `tools` of the training data: a JSON file, or the list itself "
        "(--data of a dataset whose trajectories offered tools gives them)",
    )


class LoopConfig(_Strict):
    protocol: Literal["react", "tool_calls"] = Field(
        "react",
        description="react: the paper's Thought/Action text; tool_calls: the chat template's "
        "native tool calls, with tool schemas and tool messages",
    )
    max_depth: int = Field(6, ge=0, description="the paper's 6: up to max_depth + 1 turns")
    max_new_tokens: int = Field(256, ge=1, description="per assistant turn")
    max_context: int | None = Field(None, ge=16, description="default the model's limit")


class SamplingConfig(_Strict):
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0)
    n: int = Field(1, ge=1, description="samples per question (pass@k up to n)")


class HFConfig(_Strict):
    batch_size: int = Field(16, ge=1, description="episodes generated together")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="auto = cuda:LOCAL_RANK when available, else cpu")


class OpenAIConfig(_Strict):
    served_model: str | None = Field(
        None, description="model name on the server; default: its only one"
    )
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(3, ge=0)
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    strip_bos: bool = Field(True, description="drop a leading BOS text; servers add their own")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="more fields for every request, e.g. {skip_special_tokens: false} for vLLM "
        "to return the special tokens a model's tool calls are written with",
    )
    api: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: natscale renders the prompt with the training template and "
        "posts /v1/completions; chat: the messages go to /v1/chat/completions and the server's "
        "chat template renders them (and its tool parser reads the calls)",
    )
    prompt_format: Literal["text", "ids"] = Field(
        "text",
        description="text: the rendered prompt (the server tokenizes it); ids: our token ids "
        "(exactly the training tokens; vLLM and SGLang accept them, transformers serve does not)",
    )


class ScriptedConfig(_Strict):
    trajectories: list[str] = Field(
        default_factory=list,
        description="NAT release files (or OpenAI chat files, for tool calls) whose assistant "
        "turns are replayed",
    )


class EvalConfig(_Strict):
    model: str | None = Field(None, description="HF model directory or http(s) endpoint URL")
    backend: Literal["hf", "openai", "scripted"] = "hf"
    output: PathText | None = Field(None, description="output directory (or --out)")
    questions: list[str] = Field(min_length=1, description="JSON/JSONL {id, question, answer}")
    task: Literal["math", "qa", "yesno"] = "math"
    limit: int | None = Field(None, ge=1, description="evaluate the first N questions only")
    prompt: PromptConfig = PromptConfig()
    tools: ToolsConfig = ToolsConfig()
    loop: LoopConfig = LoopConfig()
    sampling: SamplingConfig = SamplingConfig()
    hf: HFConfig = HFConfig()
    openai: OpenAIConfig = OpenAIConfig()
    scripted: ScriptedConfig = ScriptedConfig()
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% intervals")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.backend in ("hf", "openai") and not self.model:
            raise ValueError(f"backend {self.backend!r} needs `model`")
        if self.backend == "openai" and not str(self.model).startswith(("http://", "https://")):
            raise ValueError("backend 'openai' needs `model` to be an http(s) endpoint URL")
        if self.backend == "scripted" and not self.scripted.trajectories:
            raise ValueError("backend 'scripted' needs scripted.trajectories")
        if self.openai.api == "chat" and self.openai.prompt_format == "ids":
            raise ValueError(
                "openai.prompt_format: ids is for openai.api: completions (a chat endpoint "
                "takes messages, not a prompt)"
            )
        native = self.prompt.response_template is not None or self.tools.schemas is not None
        if native and self.loop.protocol != "tool_calls":
            raise ValueError(
                "prompt.response_template and tools.schemas are for native tool calls: set "
                "loop.protocol: tool_calls (or leave them out)"
            )
        return self
