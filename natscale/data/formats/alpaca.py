"""FireAct / Alpaca records: the question in ``instruction``, the whole ReAct text in ``output``.

One record (FireAct ``alpaca_format``)::

    {"instruction": "Which magazine was started first, Arthur's Magazine or First for Women?",
     "input": "",
     "output": "Thought: I need to search ...\\nAction: search[Arthur's Magazine]\\n"
               "Observation: Arthur's Magazine (1844-1846) was ...\\n"
               "Thought: ...\\nAction: finish[Arthur's Magazine]\\n"
               "Observation: Episode finished, reward = True\\n"}

Text in ``output`` before its first ``Thought``/``Action``/``Observation`` line (the answer
options of FireAct's multiple-choice tasks) belongs to the question: it is appended to it on a
new line, untrained. The rest of ``output`` is split into turns: a line starting ``Observation:`` (or ``Observation 2:``) opens an
observation turn that runs until a line starting ``Thought``/``Action``; everything else is
assistant text. The question is ``instruction``, plus ``input`` on a new paragraph when it is not
empty; an optional ``system`` field becomes the system prompt. FireAct trains on observations
too; here they are masked like every other format (docs/data.md, "Masking"). Outcome: ``success_field`` /
``score_field``, else the final ``reward = True|False`` observation.

Writing (``natscale convert data --to alpaca``): the question in ``instruction``, the turns' text
joined by newlines in ``output``, which the loader splits again at lines starting ``Observation``
/ ``Thought`` / ``Action``. So an observation that does not start with ``Observation`` gets that
prefix, an assistant turn right after an observation or before any such line (the first one)
that does not start with ``Thought``/``Action`` gets ``Thought: `` (else it would be read back
as part of the observation, or of the question as its preamble), and
turn-level training flags are not kept (the loader trains assistant turns). The instruction
joins ``system``; tool calls are written as ``<tool_call>`` text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal

from natscale.agent.react import AGENT_LINE, OBSERVATION_LINE
from natscale.data.errors import Issues
from natscale.data.formats.base import Format, RecordSource, per_record
from natscale.data.formats.common import (
    check_empty,
    extra_meta,
    field,
    load_records,
    read_outcome,
    record_field,
    record_id,
)
from natscale.data.formats.reader import Record
from natscale.data.formats.writing import (
    Notes,
    extra_fields,
    outcome_fields,
    system_with_instruction,
    tool_calls_text,
)
from natscale.data.trajectory import Trajectory, Turn


class AlpacaSource(RecordSource):
    format: Literal["alpaca", "fireact"]
    question_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    system_field: str = "system"


def split_preamble(text: str) -> tuple[str, str]:
    """``(preamble, rest)``: the lines of ``text`` before its first ``Thought``/``Action``/
    ``Observation`` line, and the rest. FireAct's multiple-choice tasks put the answer options
    there: they are part of the question, not model text. No such line: no preamble."""
    lines = text.split("\n")
    for k, line in enumerate(lines):
        if AGENT_LINE.match(line) or OBSERVATION_LINE.match(line):
            return "\n".join(lines[:k]).strip(), "\n".join(lines[k:])
    return "", text


def split_react(text: str) -> list[Turn]:
    """Assistant / observation turns of a ReAct transcript (see the module docstring)."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        if OBSERVATION_LINE.match(line):
            role = "observation"
        elif AGENT_LINE.match(line):
            role = "assistant"
        else:
            role = blocks[-1][0] if blocks else "assistant"
        if (
            blocks
            and blocks[-1][0] == role
            and not (role == "observation" and OBSERVATION_LINE.match(line))
        ):
            blocks[-1][1].append(line)
        else:
            blocks.append((role, [line]))
    turns = []
    for role, lines in blocks:
        content = "\n".join(lines).strip()
        if content:
            turns.append(Turn(role, content))
    return turns


def load(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    question_field: str,
    input_field: str,
    output_field: str,
    system_field: str,
    task: str,
    success_field: str | None,
    score_field: str | None,
    answer_field: str | None,
    on_error: str = "raise",
    issues: Issues | None = None,
    skip_reasons: frozenset[str] = frozenset(),
) -> list[Trajectory]:
    def parse(rec: Record) -> Trajectory:
        question = record_field(rec, question_field, str)
        extra = field(rec, rec.data, input_field, str, default="")
        output = record_field(rec, output_field, str)
        preamble, body = split_preamble(output)
        turns = split_react(body)
        check_empty(rec, turns, output_field)
        meta = extra_meta(rec, output_field, answer_field)
        return Trajectory(
            id=record_id(rec),
            task=task,
            system=field(rec, rec.data, system_field, str, default=""),
            question=_question(question, extra, preamble),
            turns=turns,
            outcome=read_outcome(rec, turns, success_field, score_field),
            meta=meta,
        )

    return load_records(paths, parse, on_error=on_error, issues=issues, skip_reasons=skip_reasons)


def _question(question: str, extra: str, preamble: str) -> str:
    text = f"{question}\n\n{extra}" if extra.strip() else question
    return f"{text}\n{preamble}" if preamble else text


def alpaca_record(traj: Trajectory, notes: Notes) -> dict[str, Any]:
    lines: list[str] = []
    previous = ""
    started = False  # a line split_preamble stops at is written: no more text joins the question
    for turn in traj.turns:
        text = tool_calls_text(turn)
        if turn.tool_calls:
            notes["tool calls written as <tool_call> text"] += 1
        if turn.role == "observation" and not text.lstrip().startswith("Observation"):
            text = f"Observation: {text}"
            notes["'Observation: ' prefix added"] += 1
        if turn.role == "assistant" and not AGENT_LINE.match(text):
            if previous == "observation":
                text = f"Thought: {text}"
                notes["'Thought: ' prefix added after an observation"] += 1
            elif not started:  # else the loader would append it to the question, untrained
                text = f"Thought: {text}"
                notes["'Thought: ' prefix added to the first assistant turn"] += 1
        started = started or any(
            AGENT_LINE.match(line) or OBSERVATION_LINE.match(line) for line in text.split("\n")
        )
        previous = turn.role
        if turn.role in ("user", "system"):
            notes[f"{turn.role} turns written as assistant text"] += 1
        if bool(turn.train) != (turn.role == "assistant"):
            notes["non-default training flags dropped"] += 1
        lines.append(text)
    record: dict[str, Any] = {"id": traj.id, "instruction": traj.question, "input": ""}
    record["output"] = "\n".join(lines)
    system = system_with_instruction(traj, notes)
    if system:
        record["system"] = system
    record.update(outcome_fields(traj))
    record.update(extra_fields(traj, set(record)))
    return record


ENTRIES = [
    Format("alpaca", load, per_record(alpaca_record), AlpacaSource),
    Format("fireact", load, per_record(alpaca_record), AlpacaSource),
]
