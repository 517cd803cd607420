"""The NAT release format (Reason-Wang/NAT, ``reasonwang/NATInstruct``).

Three files. The trajectory file is a JSON list (or JSONL) of::

    {"id": "q17", "source": 0.2,
     "info": {"reward": false, "f1": 0.4, "pred": "18", "gt": "20", "finished": true},
     "conversations": [
        {"role": "assistant", "content": "Thought: ...\\nAction: calculate[2 * 9]", "loss": true},
        {"role": "user", "content": "Observation: 18", "loss": false},
        {"role": "assistant", "content": "Thought: ...\\nAction: finish[18]", "loss": true},
        {"role": "user", "content": "Observation: Episode finished", "loss": false}]}

The conversation starts at the first assistant turn; ``user`` turns are observations. A
leading ``system`` turn (what the writer makes of a system prompt) is the system prompt. The question
file (JSON or JSONL) holds ``{"id": "q17", "question": "...", "answer": "... #### 20"}`` and is
joined by ``id`` (several trajectories may share one). The task prompt file gives the instruction
turns and question templates (:mod:`natscale.data.prompts`).

Unfinished trajectories (``info.finished`` false, or no ``info.pred``) load with
``meta["finished"] = False``; what to do with them is the prepare config's ``unfinished``.

Writing (``natscale convert data --to nat``): ``OUT`` holds ``{id, source, info: {reward, f1,
pred, gt, finished, ...}, conversations: [{role, content, loss}]}`` records; ``<OUT
stem>.questions.jsonl`` holds ``{id, question, answer}`` (one per id); ``<OUT stem>.prompt.json``
the task prompt (``task``, ``instruction``, ``acknowledgement``) when there is one. The release
has one task prompt per file, so all trajectories must share it. Observations and user turns are
``user`` turns (the format has no other role for them); tool calls are written as
``<tool_call>`` text; a system prompt becomes a leading ``system`` turn.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from natscale.data.errors import DataError, Issues, handle
from natscale.data.formats.base import (
    SUCCESS_DOC,
    Format,
    Paths,
    StrictModel,
    native_tools_field,
)
from natscale.data.formats.common import (
    check_empty,
    episode_meta,
    field,
    load_records,
    message_role,
    read_outcome,
    record_field,
)
from natscale.data.formats.reader import Record, expand_paths, iter_records
from natscale.data.formats.writing import Notes, WriteError, is_finished, tool_calls_text
from natscale.data.prompts import TaskPrompt, load_task_prompt
from natscale.data.trajectory import Trajectory, Turn


class NatSource(StrictModel):
    format: Literal["nat"]
    paths: Paths = Field(min_length=1)
    success: bool | None = Field(None, description=SUCCESS_DOC)
    questions: Paths | None = Field(None, description="question files joined by id")
    prompt: str | None = Field(None, description="task prompt file (ours or the paper's layout)")
    prompt_variant: str | None = None
    task: str = ""
    success_field: str | None = "info.reward"
    score_field: str | None = "info.f1"
    native_tools: list[str] | None = native_tools_field()


ROLE_MAP = {"assistant": "assistant", "user": "observation", "system": "system"}


def load_questions(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    on_error: str = "raise",
    issues: Issues | None = None,
) -> dict[str, dict[str, str]]:
    """``{id: {"question": str, "answer": str}}`` from JSON/JSONL question files."""
    out: dict[str, dict[str, str]] = {}
    first_at: dict[str, str] = {}  # id -> where it was first seen, for the duplicate error
    for path in expand_paths(paths):
        for rec in iter_records(path, on_error=on_error, issues=issues):
            try:
                qid = str(field(rec, rec.data, "id", (str, int)))
                question = field(rec, rec.data, "question", str)
                answer = field(rec, rec.data, "answer", (str, int, float, bool), default="")
                entry = {"question": question, "answer": str(answer)}
                if qid in out and out[qid] != entry:
                    key = "question" if out[qid]["question"] != question else "answer"
                    raise rec.error(
                        f"question id {qid!r} appears again with a different {key} (first at "
                        f"{first_at[qid]}); which one the trajectories were run on is unknown",
                        field=key,
                        reason="duplicate_question_id",
                        hint="give each question its own id, or remove one of the two",
                    )
            except DataError as err:
                handle(err, on_error, issues)
                continue
            first_at.setdefault(qid, f"{rec.file}: {rec.where}")
            out[qid] = entry
    return out


def parse_record(
    rec: Record,
    questions: dict[str, dict[str, str]] | None,
    prompt: TaskPrompt | None,
    *,
    task: str,
    success_field: str | None,
    score_field: str | None,
) -> Trajectory:
    data = rec.data
    tid = str(field(rec, data, "id", (str, int)))
    info = field(rec, data, "info", dict, default={})
    convs = record_field(rec, "conversations", list)
    turns = [_turn(rec, msg, i) for i, msg in enumerate(convs)]
    # a leading system turn (what the writer makes of a system prompt) is the system prompt
    system = turns.pop(0).content if turns and turns[0].role == "system" else ""
    check_empty(rec, turns, "conversations")
    if questions is not None:
        if tid not in questions:
            raise rec.error(
                f"id {tid!r} has no question in the question file",
                field="id",
                reason="unknown_question_id",
                hint="check that the question file matches this trajectory file",
            )
        q = questions[tid]
        question, answer = q["question"], q["answer"]
    else:
        question = field(rec, data, "question", str)
        answer = str(data.get("answer", ""))
    meta = {
        "source": data.get("source"),
        "answer": answer,
        **episode_meta(info),
        # what other formats carry as the record's other fields (natscale convert data)
        "extra": _extra(data, info),
    }
    prompt = prompt or TaskPrompt()
    return Trajectory(
        id=tid,
        task=task or prompt.task,
        instruction=prompt.instruction,
        acknowledgement=prompt.acknowledgement,
        question=question,
        system=system,
        turns=turns,
        outcome=read_outcome(rec, turns, success_field, score_field),
        meta=meta,
    )


def _turn(rec: Record, msg, i: int) -> Turn:
    if type(msg) is dict:
        # the common, well-formed message without the checks' per-field overhead; anything
        # else takes the checked path below, which names the bad field
        role, content, loss = msg.get("role"), msg.get("content"), msg.get("loss")
        if (
            type(role) is str
            and role in ROLE_MAP
            and type(content) is str
            and (loss is None or type(loss) is bool)
        ):
            return Turn(ROLE_MAP[role], content, train=loss)
    name = f"conversations[{i}]"
    role = message_role(rec, msg, name, ROLE_MAP)
    content = field(rec, msg, "content", str, name=f"{name}.content")
    loss = field(rec, msg, "loss", bool, name=f"{name}.loss", default=None)
    return Turn(ROLE_MAP[role], content, train=loss)


def load(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    questions: str | os.PathLike | Iterable[str | os.PathLike] | None,
    prompt: str | os.PathLike | TaskPrompt | None,
    prompt_variant: str | None,
    task: str,
    success_field: str | None,
    score_field: str | None,
    on_error: str = "raise",
    issues: Issues | None = None,
    skip_reasons: frozenset[str] = frozenset(),
) -> list[Trajectory]:
    qmap = (
        None if questions is None else load_questions(questions, on_error=on_error, issues=issues)
    )
    files = trajectory_files(paths, questions, prompt)
    if prompt is not None and not isinstance(prompt, TaskPrompt):
        prompt = load_task_prompt(prompt, prompt_variant)

    def parse(rec: Record) -> Trajectory:
        return parse_record(
            rec, qmap, prompt, task=task, success_field=success_field, score_field=score_field
        )

    return load_records(files, parse, on_error=on_error, issues=issues, skip_reasons=skip_reasons)


def trajectory_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    questions: str | os.PathLike | Iterable[str | os.PathLike] | None,
    prompt: str | os.PathLike | TaskPrompt | None,
) -> list[Path]:
    """The files of ``paths`` to read as trajectories: a folder's data files less the question
    and prompt files among them (the release keeps all three in one folder); a file named in
    ``paths`` itself is always read."""
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = expand_paths(given)
    side = set() if questions is None else {p.resolve() for p in expand_paths(questions)}
    if prompt is not None and not isinstance(prompt, TaskPrompt):
        side.add(Path(prompt).resolve())
    named = {Path(p).resolve() for p in given if Path(p).is_file()}
    kept = [f for f in files if f.resolve() not in side or f.resolve() in named]
    if files and not kept:
        raise DataError(
            "no trajectory file: the folder holds only the question and prompt files",
            file=", ".join(str(p) for p in given),
            reason="no_files",
            hint="put the trajectory file (JSON/JSONL) in the folder, or name it in paths",
        )
    return kept


WRITE_ROLE = {"assistant": "assistant", "observation": "user", "user": "user", "system": "system"}


def questions_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.questions.jsonl")


def prompt_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.prompt.json")


def _conversation(traj: Trajectory, notes: Notes) -> list[dict[str, Any]]:
    conv = []
    if traj.system:
        conv.append({"role": "system", "content": traj.system, "loss": False})
        notes["system prompt written as a leading system turn"] += 1
    for turn in traj.turns:
        if turn.tool_calls:
            notes["tool calls written as <tool_call> text"] += 1
        if turn.role == "user":
            notes["user turns written as observations"] += 1
        conv.append(
            {
                "role": WRITE_ROLE[turn.role],
                "content": tool_calls_text(turn),
                "loss": bool(turn.train),
            }
        )
    return conv


# a NAT record's fields that the trajectory holds elsewhere (turns, question, outcome)
_HELD = ("id", "conversations", "info", "question", "answer")
_HELD_INFO = ("reward", "f1", "finished")


def _extra(data: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The record's other fields (``source``, ...) and ``info``'s (``pred``, ``gt``, ...), for a
    writer of another format to carry over."""
    extra = {k: v for k, v in data.items() if k not in _HELD}
    rest = {k: v for k, v in info.items() if k not in _HELD_INFO}
    if rest:
        extra["info"] = rest
    return extra


def _info(traj: Trajectory) -> dict[str, Any]:
    carried = (traj.meta.get("extra") or {}).get("info")  # from another format's record
    info = {**(carried if isinstance(carried, dict) else {}), **(traj.meta.get("info") or {})}
    if traj.outcome.success is not None:
        info["reward"] = traj.outcome.success
    if traj.outcome.score is not None:
        info["f1"] = traj.outcome.score
    for key in ("pred", "gt"):
        if traj.meta.get(key) is not None:
            info[key] = traj.meta[key]
    info["finished"] = is_finished(traj)
    return info


def nat_files(trajs: list[Trajectory], out: Path, notes: Notes) -> dict[Path, Any]:
    """``{path: JSON content}`` for the trajectory, question and prompt files."""
    records, questions, prompts = [], {}, {}
    for traj in trajs:
        rec: dict[str, Any] = {"id": traj.id}
        source = traj.meta.get("source", (traj.meta.get("extra") or {}).get("source"))
        if source is not None:
            rec["source"] = source
        rec["info"] = _info(traj)
        rec["conversations"] = _conversation(traj, notes)
        records.append(rec)
        q = {"id": traj.id, "question": traj.question, "answer": traj.meta.get("answer", "")}
        if questions.get(traj.id, q)["question"] != traj.question:
            raise WriteError(
                f"id {traj.id!r} has two different questions; the NAT question file joins "
                "trajectories to questions by id, so ids must identify questions"
            )
        questions[traj.id] = q
        prompts.setdefault((traj.task, traj.instruction, traj.acknowledgement), traj.id)
    if len(prompts) > 1:
        ids = list(prompts.values())
        raise WriteError(
            f"the trajectories have {len(prompts)} different task prompts (e.g. {ids[0]!r} and "
            f"{ids[1]!r}); the NAT release format has one prompt per file: split the input by task"
        )
    files: dict[Path, Any] = {out: records, questions_path(out): list(questions.values())}
    (task, instruction, ack), _ = prompts.popitem() if prompts else (("", "", None), None)
    if instruction or ack:
        files[prompt_path(out)] = {"task": task, "instruction": instruction, "acknowledgement": ack}
    return files


ENTRIES = [Format("nat", load, nat_files, NatSource)]
