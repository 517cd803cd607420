"""Helpers shared by the format loaders: typed field access, outcome fields, question split."""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from natscale.config.loader import get_dotted
from natscale.data.errors import DataError, Issues, handle
from natscale.data.formats.reader import (
    Record,
    conversation_readers,
    expand_paths,
    iter_records,
    layout_hint,
    turn_keys,
    without_arrow_nulls,
)
from natscale.data.trajectory import Outcome, Trajectory, Turn

_MISSING = object()
# FireAct-style trajectories end with "Observation: Episode finished, reward = True"
_REWARD_IN_TEXT = re.compile(r"reward\s*=\s*(True|False|-?\d+(?:\.\d+)?)\s*$")


def field(
    rec: Record,
    obj: dict[str, Any],
    key: str,
    types: type | tuple[type, ...],
    *,
    name: str | None = None,
    default: Any = _MISSING,
) -> Any:
    """``obj[key]`` checked against ``types``; a :class:`DataError` naming ``name`` otherwise."""
    name = name or key
    if key not in obj or obj[key] is None:
        if default is not _MISSING:
            return default
        raise rec.error("missing required field", field=name, reason="missing_field")
    value = obj[key]
    # bool is an int subclass: never accept True where a number or string is expected
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        want = " or ".join(t.__name__ for t in _tuple(types))
        raise rec.error(
            f"expected {want}, got {type(value).__name__}", field=name, reason="wrong_type"
        )
    return value


def message_role(
    rec: Record,
    msg: Any,
    name: str,
    roles: dict[str, str] | frozenset[str],
    *,
    role_key: str = "role",
    hint: str = "",
) -> str:
    """The role string of message ``name`` (a dict), checked against ``roles``; DataError otherwise."""
    if not isinstance(msg, dict):
        raise rec.error("expected an object", field=name, reason="wrong_type")
    keys = turn_keys([msg])
    if msg.get(role_key) is None and keys not in (None, role_key):
        turns = name.rpartition("[")[0]  # the turn list's name: "conversation[3]" -> "conversation"
        raise rec.error(
            "missing required field",
            field=f"{name}.{role_key}",
            reason="missing_field",
            hint=f"the turns are {keys}/{'content' if keys == 'role' else 'value'}: "
            f"{conversation_readers(turns, [msg])} reads them",
        )
    role = field(rec, msg, role_key, str, name=f"{name}.{role_key}")
    if role not in roles:
        raise rec.error(
            f"unknown role {role!r}; expected one of {sorted(roles)}",
            field=f"{name}.{role_key}",
            reason="unknown_role",
            hint=hint,
        )
    return role


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def as_success(value: Any) -> bool | None:
    """Explicit success value: a bool, 0/1 (or any number: success iff >= 1), "true"/"false"."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN / inf: no success value (the caller names the record)
    if isinstance(value, (int, float)):
        return value >= 1
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def read_outcome(
    rec: Record, turns: list[Turn], success_field: str | None, score_field: str | None
) -> Outcome:
    """Outcome from explicit record fields; else from a trailing ``reward = X`` observation."""
    raw = get_dotted(rec.data, success_field)
    success = as_success(raw)
    if raw is not None and success is None:
        raise rec.error(
            f"cannot read a success value from {raw!r}",
            field=success_field,
            reason="wrong_type",
            hint="use true/false or 0/1",
        )
    score = get_dotted(rec.data, score_field)
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise rec.error(
            f"expected a number, got {type(score).__name__}", field=score_field, reason="wrong_type"
        )
    if score is not None and not math.isfinite(score):
        raise rec.error(
            f"score is {score!r}, not a finite number",
            field=score_field,
            reason="bad_score",
            hint="fix or drop the record (NaN scores would land in an arbitrary bucket)",
        )
    if raw is None and turns and turns[-1].role != "assistant":
        m = _REWARD_IN_TEXT.search(turns[-1].content.strip())
        if m:
            token = m.group(1)
            raw = token == "True" if token in ("True", "False") else float(token)
            success = as_success(raw)
    return Outcome(success=success, score=None if score is None else float(score), reward=raw)


def split_prompt(
    rec: Record, turns: list[Turn], question_turn: int, list_name: str
) -> dict[str, Any]:
    """Split a full conversation into system / instruction / acknowledgement / question / turns.

    ``question_turn`` is the index, among user turns, of the one holding the question (0 = the
    first; AgentInstruct puts its instruction first, so 1). Before it at most one user turn (the
    instruction) and one assistant reply (the acknowledgement) are allowed.
    """
    system = ""
    rest = list(enumerate(turns))
    if rest and rest[0][1].role == "system":
        system = rest.pop(0)[1].content
    user_positions = [k for k, (_, t) in enumerate(rest) if t.role == "user"]
    if len(user_positions) <= question_turn:
        raise rec.error(
            f"has {len(user_positions)} user turn(s); the question is user turn {question_turn}",
            field=list_name,
            reason="no_question",
            hint="set question_turn to the index of the user turn that holds the question",
        )
    q = user_positions[question_turn]
    prefix = [t for _, t in rest[:q]]
    instruction, ack = "", None
    if prefix:
        roles = [t.role for t in prefix]
        if roles not in (["user"], ["user", "assistant"]):
            raise rec.error(
                f"turns before the question have roles {roles}; expected [user] or [user, assistant]"
                " (instruction and acknowledgement)",
                field=list_name,
                reason="bad_prompt_turns",
            )
        instruction = prefix[0].content
        ack = prefix[1].content if len(prefix) > 1 else None
    return {
        "system": system,
        "instruction": instruction,
        "acknowledgement": ack,
        "question": rest[q][1].content,
        "turns": [t for _, t in rest[q + 1 :]],
    }


def record_field(rec: Record, key: str, types: type | tuple[type, ...]) -> Any:
    """A required top-level field; when it is missing, the error says which format or option
    reads a record laid out like this one."""
    if key not in rec.data or rec.data[key] is None:
        others = {k: v for k, v in rec.data.items() if k != key}
        raise rec.error(
            "missing required field",
            field=key,
            reason="missing_field",
            hint=layout_hint(others),
        )
    return field(rec, rec.data, key, types)


def read_tools(rec: Record, tools_field: str | None) -> list[dict[str, Any]] | None:
    """The record's tool schemas in OpenAI form (:mod:`natscale.data.render.tools`), if any."""
    from natscale.data.render.tools import normalize_tools

    raw = get_dotted(rec.data, tools_field)
    if raw is None:
        return None
    if rec.arrow:  # Parquet: the schemas' objects carry each other's members as nulls
        raw = without_arrow_nulls(raw)
    try:
        return normalize_tools(raw) or None
    except ValueError as exc:
        raise rec.error(
            str(exc),
            field=tools_field,
            reason="wrong_type",
            hint='give a list of {"name", "description", "parameters"} schemas (or their JSON '
            "text), or set the source's tools_field: null to ignore them",
        ) from None


_KEEP_EMPTY = contextvars.ContextVar("keep_empty", default=False)


@contextlib.contextmanager
def keeping_empty(keep: bool) -> Iterator[None]:
    """While active (``outcome.empty: keep``), :func:`check_empty` lets empty conversations
    through."""
    token = _KEEP_EMPTY.set(keep)
    try:
        yield
    finally:
        _KEEP_EMPTY.reset(token)


def check_empty(rec: Record, turns: list, list_name: str) -> None:
    """Raise the empty-conversation error when ``turns`` is empty, unless kept."""
    if not turns and not _KEEP_EMPTY.get():
        raise empty_error(rec, list_name)


def empty_error(rec: Record, list_name: str) -> DataError:
    return rec.error(
        "conversation is empty (no turn after the question)",
        field=list_name,
        reason="empty_conversation",
        hint="set outcome.empty: skip to count and skip such records",
    )


def record_id(rec: Record, key: str = "id") -> str:
    """The record's id field, else ``FILE_NAME:RECORD`` (stable across runs)."""
    value = rec.data.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return f"{Path(rec.file).name}:{rec.where.split()[-1]}"


def extra_meta(rec: Record, conversation_key: str, answer_field: str | None) -> dict[str, Any]:
    """``meta`` for a record: its gold ``answer`` (if any) and its other top-level fields."""
    answer = get_dotted(rec.data, answer_field)
    return {
        "answer": "" if answer is None else str(answer),
        "extra": {k: v for k, v in rec.data.items() if k != conversation_key},
    }


def episode_meta(info: dict[str, Any]) -> dict[str, Any]:
    """The ``meta`` entries of a NAT record's (or a natscale eval episode's) ``info``: the
    recorded prediction (``pred``) and gold (``gt``), and ``finished``: ``info.finished``, else
    whether ``info.pred`` is set (an episode without a final answer is unfinished)."""
    return {
        "info": info,
        "pred": info.get("pred"),
        "gt": info.get("gt"),
        "finished": bool(info.get("finished", info.get("pred") is not None)),
    }


def chat_trajectory(
    rec: Record,
    turns: list[Turn],
    key: str,
    *,
    question_turn: int,
    task: str,
    success_field: str | None,
    score_field: str | None,
    tools_field: str | None,
    answer_field: str | None,
) -> Trajectory:
    """The trajectory of a chat-style record (openai, sharegpt) whose list ``key`` gave
    ``turns``: its prompt split off at ``question_turn`` (``split_prompt``), its outcome, its
    tools and its other fields."""
    parts = split_prompt(rec, turns, question_turn, key)
    check_empty(rec, parts["turns"], key)
    return Trajectory(
        id=record_id(rec),
        task=task,
        outcome=read_outcome(rec, parts["turns"], success_field, score_field),
        tools=read_tools(rec, tools_field),
        meta=extra_meta(rec, key, answer_field),
        **parts,
    )


def load_records(
    paths: Any,
    parse: Callable[[Record], Trajectory],
    *,
    on_error: str,
    issues: Issues | None,
    skip_reasons: frozenset[str] = frozenset(),
    wrap_lists: str | None = None,
) -> list[Trajectory]:
    """Parse every record of ``paths`` with ``parse(rec)``; bad records raise or are counted.

    ``wrap_lists``: a record that is a bare list of turns (ETO) is read as ``{wrap_lists: list}``.

    A record failing with a reason in ``skip_reasons`` (e.g. ``empty_conversation``) is always
    counted and skipped, whatever ``on_error`` says.
    """
    found = _iter_parsed(paths, parse, on_error, issues, skip_reasons, wrap_lists)
    return found if _LAZY.get() else list(found)  # type: ignore[return-value]


_LAZY = contextvars.ContextVar("lazy_records", default=False)


@contextlib.contextmanager
def lazily() -> Iterator[None]:
    """While active, :func:`load_records` (so every format's ``load``) returns an iterator that
    reads and parses the records as it is consumed, instead of a list (``iter_trajectories``)."""
    token = _LAZY.set(True)
    try:
        yield
    finally:
        _LAZY.reset(token)


def _iter_parsed(
    paths: Any,
    parse: Callable[[Record], Trajectory],
    on_error: str,
    issues: Issues | None,
    skip_reasons: frozenset[str],
    wrap_lists: str | None,
) -> Iterator[Trajectory]:
    for path in expand_paths(paths):
        for rec in iter_records(path, on_error=on_error, issues=issues, wrap_lists=wrap_lists):
            try:
                traj = parse(rec)
            except DataError as err:
                if err.reason in skip_reasons and issues is not None:
                    # counted as asked: the hint to skip them would only confuse
                    issues.add(
                        DataError(
                            err.message,
                            file=err.file,
                            record=err.record,
                            field=err.field,
                            reason=err.reason,
                            hint="counted and skipped as configured",
                        )
                    )
                else:
                    handle(err, on_error, issues)
                continue
            # where it came from, for errors in later stages
            traj.meta["file"], traj.meta["record"] = rec.file, rec.where
            yield traj
