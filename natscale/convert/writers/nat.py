"""NAT release writer: trajectory file + question file + task prompt file.

``OUT`` holds ``{id, source, info: {reward, f1, pred, gt, finished, ...}, conversations:
[{role, content, loss}]}`` records; ``<OUT stem>.questions.jsonl`` holds ``{id, question,
answer}`` (one per id); ``<OUT stem>.prompt.json`` the task prompt (``task``, ``instruction``,
``acknowledgement``) when there is one. The release has one task prompt per file, so all
trajectories must share it. Observations and user turns are ``user`` turns (the format has no
other role for them); tool calls are written as ``<tool_call>`` text; a system prompt becomes a
leading ``system`` turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natscale.convert.errors import ConvertError
from natscale.convert.writers.common import Notes, is_finished, tool_calls_text
from natscale.data.trajectory import Trajectory

ROLE = {"assistant": "assistant", "observation": "user", "user": "user", "system": "system"}


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
            {"role": ROLE[turn.role], "content": tool_calls_text(turn), "loss": bool(turn.train)}
        )
    return conv


def _info(traj: Trajectory) -> dict[str, Any]:
    info = dict(traj.meta.get("info") or {})
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
        if traj.meta.get("source") is not None:
            rec["source"] = traj.meta["source"]
        rec["info"] = _info(traj)
        rec["conversations"] = _conversation(traj, notes)
        records.append(rec)
        q = {"id": traj.id, "question": traj.question, "answer": traj.meta.get("answer", "")}
        if questions.get(traj.id, q)["question"] != traj.question:
            raise ConvertError(
                f"id {traj.id!r} has two different questions; the NAT question file joins "
                "trajectories to questions by id, so ids must identify questions"
            )
        questions[traj.id] = q
        prompts.setdefault((traj.task, traj.instruction, traj.acknowledgement), traj.id)
    if len(prompts) > 1:
        ids = list(prompts.values())
        raise ConvertError(
            f"the trajectories have {len(prompts)} different task prompts (e.g. {ids[0]!r} and "
            f"{ids[1]!r}); the NAT release format has one prompt per file: split the input by task"
        )
    files: dict[Path, Any] = {out: records, questions_path(out): list(questions.values())}
    (task, instruction, ack), _ = prompts.popitem() if prompts else (("", "", None), None)
    if instruction or ack:
        files[prompt_path(out)] = {"task": task, "instruction": instruction, "acknowledgement": ack}
    return files
