"""What a format module provides: ``Format`` entries (loader, writer, options model).

The options model is the format's ``sources:`` entry of the prepare config (``format`` and
``paths`` plus the loader's options); its field defaults are the loader's defaults, the only place
they are declared. A ``Format`` may preset some options (``agentinstruct`` is ``sharegpt`` with
``question_turn: 1``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from natscale.data.formats.writing import Notes
from natscale.data.trajectory import Trajectory

Paths = list[str]
# (trajectories, OUT, notes) -> {path: JSON content}: OUT itself, plus side files (nat)
Writer = Callable[[list[Trajectory], Path, Notes], dict[Path, Any]]
# options of the ``sources:`` entry that are not loader options (``native_tools`` applies to
# what any loader gives: ``natscale.data.formats.load_trajectories`` takes it)
SOURCE_ONLY = frozenset({"format", "paths", "success", "native_tools"})


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


SUCCESS_DOC = (
    "every trajectory of this source is a success (true) or a failure (false), whatever its "
    "fields say; for SFT data without outcomes (AgentInstruct, glaive, ETO)"
)


NATIVE_TOOLS_DOC = (
    "turn ReAct text turns (Thought/Action, Observation) into native tool calls and tool "
    "results, offering these tools (e.g. [calculate, finish]), as natscale eval's "
    "loop.protocol: tool_calls runs an agent; null: as they are"
)


def native_tools_field() -> Any:
    return Field(None, description=NATIVE_TOOLS_DOC)


class RecordSource(StrictModel):
    """Options shared by the formats that hold one whole trajectory per record."""

    paths: Paths = Field(min_length=1, description="trajectory files or directories")
    success: bool | None = Field(None, description=SUCCESS_DOC)
    task: str = ""
    success_field: str | None = Field("reward", description="dotted path of the success value")
    score_field: str | None = Field("score", description="dotted path of a quality score")
    answer_field: str | None = Field("answer", description="dotted path of the gold answer")
    native_tools: list[str] | None = native_tools_field()


@dataclass(frozen=True)
class Format:
    """One ``format:`` name: how to read it, how to write it, which options it takes."""

    name: str
    load: Callable[..., list[Trajectory]]
    write: Writer
    source: type[StrictModel]
    preset: dict[str, Any] = field(default_factory=dict)  # options this name sets unless given

    def option_names(self) -> list[str]:
        return [n for n in self.source.model_fields if n not in SOURCE_ONLY]

    def loader_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every loader option: ``given``, else this name's preset, else the model's default."""
        names = self.option_names()
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise TypeError(
                f"format {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are {', '.join(names)}"
            )
        defaults = {n: self.source.model_fields[n].get_default() for n in names}
        return {**defaults, **self.preset, **given}

    def parse_option(self, name: str, value: Any) -> Any:
        """``value`` (from a command line: a string or parsed JSON) of option ``name`` as its
        field in the options model takes it; a TypeError that names the option otherwise."""
        if name not in self.option_names():
            self.loader_options({name: value})  # raises, listing the options
        info = self.source.model_fields[name]
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        adapter = TypeAdapter(kind)
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            if isinstance(value, str):  # one path where the option takes a list of them
                with contextlib.suppress(ValidationError):
                    return adapter.validate_python([value])
            why = exc.errors()[0]["msg"]
            raise TypeError(f"option {name}={value!r} of format {self.name!r}: {why}") from None


def per_record(make: Callable[[Trajectory, Notes], dict[str, Any]]) -> Writer:
    """A writer that turns each trajectory into one record of ``OUT``."""

    def write(trajs: list[Trajectory], out: Path, notes: Notes) -> dict[Path, Any]:
        return {out: [make(t, notes) for t in trajs]}

    return write
