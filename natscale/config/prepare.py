"""``natscale prepare`` config: sources, outcome labelling, NAT strategy, rendering, packing.

Relative paths are taken from the working directory. Every section forbids unknown keys, so a
typo fails with the key's dotted name. The ``sources`` entries are the format modules' options
models (``natscale.data.formats``). See ``examples/configs/prepare_math.yaml``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from natscale.config.paths import PathText
from natscale.data.formats import SOURCE_MODELS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# one model per format module (natscale.data.formats), told apart by ``format``
Source = Annotated[Union[SOURCE_MODELS], Field(discriminator="format")]  # noqa: UP007


class OutcomeConfig(_Strict):
    success: Literal["field", "all", "exact", "em", "f1"] = Field(
        "field",
        description="explicit field, all (every trajectory is a success: SFT data without "
        "outcomes), or computed against the gold answer",
    )
    score: Literal["auto", "field", "f1", "none"] = "auto"
    f1_threshold: float = Field(1.0, ge=0.0, le=1.0)
    unfinished: Literal["keep", "skip", "error"] = "keep"
    empty: Literal["skip", "error", "keep"] = Field(
        "skip", description="keep: load them (only render.paper_compat trains anything of them)"
    )


class Bucket(_Strict):
    """A nat-fine quality bucket: score >= min (> min when not inclusive); None = catch-all."""

    name: str
    marker: str
    min: float | None = None
    inclusive: bool = True


# the paper's HotpotQA 4-class scheme, top bucket first (F1 = 1, >= 0.4, > 0, = 0)
PAPER_BUCKETS = [
    Bucket(name="correct", marker="[Correct]", min=1.0),
    Bucket(name="mostly_correct", marker="[Mostly Correct]", min=0.4),
    Bucket(name="mostly_incorrect", marker="[Mostly Incorrect]", min=0.0, inclusive=False),
    Bucket(name="totally_incorrect", marker="[Totally Incorrect]"),
]
PAPER_MARKERS = [
    "Generate a sequence of Thought and Action steps to solve the problem correctly.",
    "Generate a sequence of Thought and Action steps. But incorrectly solve the problem.",
]


class StrategyConfig(_Strict):
    name: Literal["vanilla", "nut", "nat", "nat-fine"] = "nat"
    position: Literal["prefix", "suffix"] | None = Field(
        None, description="marker placement; default suffix for nat, prefix for nat-fine"
    )
    plain: str | None = Field(None, description="question template; default the prompt file's")
    markers: list[str] | None = Field(None, description="marker text per class, top first")
    templates: list[str] | None = Field(
        None, description="full question templates per class ({question}); override markers"
    )
    suffix_format: str = "{plain}. {marker}"
    prefix_format: str = "{marker} {plain}."
    buckets: list[Bucket] | None = Field(None, description="nat-fine buckets; default paper's 4")
    counts: dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        None, description="examples to keep per class name (seeded sample); missing = all"
    )
    sample: Literal["random", "first"] = "random"
    weights: dict[str, Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] | None = Field(
        None, description="loss weight per class name (finite, >= 0)"
    )

    @model_validator(mode="after")
    def _check(self) -> StrategyConfig:
        names = self.class_names()
        for key, mapping in (("counts", self.counts), ("weights", self.weights)):
            unknown = sorted(set(mapping or {}) - set(names))
            if unknown:
                raise ValueError(f"{key}: unknown class(es) {unknown}; classes are {names}")
        for key, seq in (("markers", self.markers), ("templates", self.templates)):
            if seq is not None and len(seq) != len(names):
                raise ValueError(f"{key}: need {len(names)} entries (one per class {names})")
        for t in self.templates or []:
            if "{question}" not in t:
                raise ValueError(f"templates: {t!r} has no {{question}} placeholder")
        if self.buckets is not None:
            if self.buckets[-1].min is not None:
                raise ValueError("buckets: the last bucket must be the catch-all (no min)")
            if len({b.name for b in self.buckets}) != len(self.buckets):
                raise ValueError("buckets: names must be unique")
        return self

    def class_names(self) -> list[str]:
        if self.name == "vanilla":
            return ["success"]
        if self.name in ("nut", "nat"):
            return ["success", "failure"]
        return [b.name for b in self.resolved_buckets()]

    def resolved_buckets(self) -> list[Bucket]:
        return self.buckets if self.buckets is not None else PAPER_BUCKETS


class RenderConfig(_Strict):
    tokenizer: str = Field(description="local HF tokenizer directory")
    template: Literal["auto", "hf", "llama2", "chatml", "llama3"] = Field(
        "auto", description="auto = the tokenizer's chat template if it has one, else llama2"
    )
    instruction: Literal["turn", "prepend", "system"] = Field(
        "turn", description="turn = user turn + acknowledgement (the paper)"
    )
    acknowledgement: str | None = Field(None, description="override; default the prompt file's")
    observation_role: str = "user"
    end_of_turn: str | None = Field(None, description="hf template: token closing a turn")
    chat_template: str | None = Field(
        None,
        description="Jinja file that replaces the tokenizer's chat template (saved with the "
        "prepared tokenizer, so training's export and evaluation use it too)",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="more variables for the chat template, as apply_chat_template's **kwargs "
        "and vLLM's chat_template_kwargs (e.g. {enable_thinking: false} for Qwen3); hf only",
    )
    turns: Literal["all", "each"] = Field(
        "all",
        description="all = one example per trajectory; each = one example per trained turn, "
        "ending with it, after the history as the chat template shows it when generating that "
        "turn (for templates that drop earlier turns' <think> reasoning: Qwen3, DeepSeek-R1)",
    )
    add_missing_special_tokens: bool = False
    trim_untrained_tail: bool = True
    paper_compat: bool = Field(
        False,
        description="the paper's own preprocessing token for token (template llama2): each "
        "segment tokenised on its own, text not stripped, the final turn kept and a trained "
        "</s> after it (docs/data.md, Paper-exact rendering)",
    )


class PackConfig(_Strict):
    max_seq_len: int = Field(4096, ge=8)
    algorithm: Literal["bfd_repair", "bfd", "ffd", "none"] = Field(
        "bfd_repair",
        description="bfd_repair = best-fit decreasing + local-search repair; none = one example "
        "per row (for model families natscale cannot train on packed rows)",
    )
    overlong: Literal["truncate", "drop"] = "truncate"
    window_examples: int = Field(
        100_000,
        ge=1,
        description="examples packed together and written as one shard (data-*.arrow): "
        "prepare holds one window at a time; data that fits in one window is packed globally",
    )


class PrepareConfig(_Strict):
    output: PathText | None = Field(None, description="output directory (or --out)")
    overwrite: bool = False
    seed: int = 42
    num_proc: int = Field(1, ge=1)
    limit: int | None = Field(
        None, ge=1, description="read only the first N trajectories (all sources): a trial run"
    )
    on_error: Literal["raise", "skip"] = "raise"
    sources: list[Source] = Field(min_length=1)
    outcome: OutcomeConfig = OutcomeConfig()
    strategy: StrategyConfig = StrategyConfig()
    render: RenderConfig
    pack: PackConfig = PackConfig()
