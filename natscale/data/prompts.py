"""Task prompt files: the instruction turns and the question templates of one task.

Our layout (``examples/math_react/prompt.json``)::

    {"task": "math",
     "instruction": "Solve a math problem with interleaving Thought, Action, Observation steps. ...",
     "acknowledgement": "I've understood your instruction, start please.",
     "templates": {"plain": "Question: {question}",
                   "success": "Question: {question}. Generate ... to solve the problem correctly.",
                   "failure": "Question: {question}. Generate ... But incorrectly solve the problem."}}

Fine-grained templates may be added under ``templates`` with the bucket names as keys.

The NAT paper's own layout (``prompts/gsm8k/gsm8k_conversation.json`` in its release) is a dict of
variants, each ``{"conversations": [user instruction, assistant acknowledgement],
"question_prompt" | "correct_question_prompt" + "incorrect_question_prompt" |
"class_1_question_prompt".."class_K_question_prompt"}``; pick one with ``variant``. The default
is ``zero-shot-target-aware`` (the NAT prompt) for ``nat`` / ``nat-fine``, and the paper's
baseline prompt ``zero-shot`` (no "correct or incorrect" sentence in the instruction, a plain
question) for ``vanilla`` / ``nut`` when the file has it. ``class_K`` is the top bucket.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natscale.data.errors import DataError

PAPER_ACKNOWLEDGEMENT = "I've understood your instruction, start please."
PLAIN_TEMPLATE = "Question: {question}"
DEFAULT_VARIANT = "zero-shot-target-aware"
# the paper's baselines (vanilla: --neg_num 0, NUT: negatives, no marker) use this variant
BASELINE_VARIANT = "zero-shot"
BASELINE_STRATEGIES = ("vanilla", "nut")
# the paper's few-shot variants (one-shot, two-shot): refused, as its training code does
FEW_SHOT = re.compile(r"^(one|two|three|four|five|few|\d+)[-_]shot", re.IGNORECASE)


@dataclass(frozen=True)
class TaskPrompt:
    task: str = ""
    instruction: str = ""
    acknowledgement: str | None = None
    plain: str = PLAIN_TEMPLATE
    # full question templates keyed by class name ("success", "failure", bucket names)
    templates: dict[str, str] = field(default_factory=dict)
    # paper layout fine-grained templates, top bucket first
    bucket_templates: tuple[str, ...] = ()


def load_task_prompt(
    path: str | os.PathLike, variant: str | None = None, *, strategy: str | None = None
) -> TaskPrompt:
    """Read a task prompt file in our layout or the paper's (see the module docstring).

    ``strategy`` picks the default paper variant when ``variant`` is None: the baseline
    ``zero-shot`` for ``vanilla`` / ``nut`` (when the file has it), else
    ``zero-shot-target-aware``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is accepted
    except FileNotFoundError as exc:
        raise DataError(
            "task prompt file not found", file=str(path), reason="missing_file"
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if path.stat().st_size == 0 or not path.read_bytes().strip():
            raise DataError("file is empty", file=str(path), reason="empty_file") from exc
        raise DataError(
            f"not a UTF-8 JSON file ({exc})", file=str(path), reason="malformed_json"
        ) from exc
    if not isinstance(data, dict):
        raise DataError("expected a JSON object", file=str(path), reason="wrong_type")
    if "templates" in data or "instruction" in data:
        return _ours(data, str(path))
    if variant is None and strategy in BASELINE_STRATEGIES and BASELINE_VARIANT in data:
        variant = BASELINE_VARIANT
    return _paper(data, str(path), variant)


def _str(data: dict[str, Any], key: str, file: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise DataError(
            "missing" if value is None else f"expected a string, got {type(value).__name__}",
            file=file,
            field=key,
            reason="missing_field" if value is None else "wrong_type",
        )
    return value


def _check_template(text: str, file: str, key: str) -> str:
    if "{question}" not in text:
        raise DataError(
            "template has no {question} placeholder", file=file, field=key, reason="bad_template"
        )
    return text


def _ours(data: dict[str, Any], file: str) -> TaskPrompt:
    templates = data.get("templates", {})
    if not isinstance(templates, dict):
        raise DataError("expected an object", file=file, field="templates", reason="wrong_type")
    checked = {
        k: _check_template(_str(templates, k, file, required=True), file, f"templates.{k}")
        for k in templates
    }
    return TaskPrompt(
        task=_str(data, "task", file) or "",
        instruction=_str(data, "instruction", file) or "",
        acknowledgement=_str(data, "acknowledgement", file),
        plain=checked.pop("plain", PLAIN_TEMPLATE),
        templates=checked,
    )


def _paper(data: dict[str, Any], file: str, variant: str | None) -> TaskPrompt:
    name = variant or DEFAULT_VARIANT
    if name not in data:
        raise DataError(
            f"prompt variant {name!r} not in the file; it has {sorted(data)}",
            file=file,
            reason="bad_template",
            hint="set the source's prompt_variant",
        )
    entry = data[name]
    if not isinstance(entry, dict):
        raise DataError("expected an object", file=file, field=name, reason="wrong_type")
    convs = entry.get("conversations") or []
    if FEW_SHOT.match(name) or len(convs) > 2:
        raise DataError(
            f"prompt variant {name!r} is a few-shot prompt (demonstrations in its conversation, "
            f"{len(convs)} turn(s)); the paper uses few-shot prompts only to collect trajectories "
            "and its training code refuses them, and natscale cannot place the demonstrations "
            "(they would become the acknowledgement)",
            file=file,
            field=name,
            reason="bad_template",
            hint=f"set the source's prompt_variant to {BASELINE_VARIANT!r} (vanilla, nut) or "
            f"{DEFAULT_VARIANT!r} (nat), or write the demonstrations into your own prompt file's "
            "instruction",
        )
    instruction = convs[0]["content"] if convs and convs[0].get("role") == "user" else ""
    ack = convs[1]["content"] if len(convs) > 1 and convs[1].get("role") == "assistant" else None
    templates: dict[str, str] = {}
    for ours, theirs in (
        ("success", "correct_question_prompt"),
        ("failure", "incorrect_question_prompt"),
    ):
        if theirs in entry:
            templates[ours] = _check_template(entry[theirs], file, f"{name}.{theirs}")
    k = 1
    buckets: list[str] = []
    while f"class_{k}_question_prompt" in entry:
        key = f"class_{k}_question_prompt"
        buckets.insert(0, _check_template(entry[key], file, f"{name}.{key}"))
        k += 1
    plain = entry.get("question_prompt", PLAIN_TEMPLATE)
    return TaskPrompt(
        task="",
        instruction=instruction,
        acknowledgement=ack,
        plain=_check_template(plain, file, f"{name}.question_prompt"),
        templates=templates,
        bucket_templates=tuple(buckets),
    )
