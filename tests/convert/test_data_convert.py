"""`natscale convert data`: writers are the inverse of the data pipeline's loaders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natscale.convert.errors import ConvertError
from natscale.convert.trajectories import convert_trajectories, nat_side_files
from natscale.data.errors import DataError
from natscale.data.formats import load_trajectories
from natscale.data.formats.writing import is_finished

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "math_react"
FORMATS = ["nat", "sharegpt", "agentinstruct", "openai", "alpaca"]


@pytest.fixture(scope="module")
def nat_input(tmp_path_factory) -> Path:
    """The example NAT set (trajectories + questions.jsonl + prompt.json), first 40 records."""
    folder = tmp_path_factory.mktemp("nat_in")
    records = json.loads((EXAMPLE / "trajectories.json").read_text())[:40]
    (folder / "trajectories.json").write_text(json.dumps(records))
    shutil.copy(EXAMPLE / "questions.jsonl", folder)
    shutil.copy(EXAMPLE / "prompt.json", folder)
    return folder / "trajectories.json"


def load(path: Path, fmt: str):
    """The data pipeline's loader; NAT's question/prompt files are the ones next to ``path``."""
    return load_trajectories(path, fmt, **(nat_side_files(path) if fmt == "nat" else {}))


def turns(traj) -> list[tuple]:
    return [(t.role, t.content, t.train, t.tool_calls, t.name) for t in traj.turns]


def core(traj, *, skip_system_turns: bool = False) -> tuple:
    """What every format keeps: id, question, turns, success, score, finished."""
    kept = [t for t in turns(traj) if not (skip_system_turns and t[0] == "system")]
    success, score = traj.outcome.success, traj.outcome.score
    return (traj.id, traj.question, kept, success, score, is_finished(traj))


@pytest.mark.parametrize("fmt", FORMATS)
def test_nat_to_format_and_back_keeps_the_trajectories(nat_input, tmp_path, fmt):
    original = load(nat_input, "nat")
    assert original[0].instruction and original[0].task == "math"  # prompt.json was found
    middle = tmp_path / f"mid.{fmt}.jsonl"
    res = convert_trajectories(nat_input, middle, src="nat", dst=fmt)
    assert res.num_records == len(original) == 40
    assert set(res.options) == {"questions", "prompt"}  # found next to the input
    converted = load(middle, fmt)
    assert [core(t) for t in converted] == [core(t) for t in original]
    if fmt in ("nat", "agentinstruct"):  # the instruction turns survive
        assert [(t.instruction, t.acknowledgement) for t in converted] == [
            (t.instruction, t.acknowledgement) for t in original
        ]
    else:  # folded into the system prompt, and said so
        assert all(t.system == t0.instruction for t, t0 in zip(converted, original, strict=True))
        assert any("folded into the system prompt" in n for n in res.notes)
    back = tmp_path / "back.json"
    convert_trajectories(middle, back, src=fmt, dst="nat")
    again = load(back, "nat")
    # a folded instruction comes back to NAT as the system prompt, i.e. a leading system turn
    assert [core(t, skip_system_turns=True) for t in again] == [core(t) for t in original]
    # NAT's other fields (source, info.pred / gt / kind) travel as the record's other fields
    first = json.loads(middle.read_text().splitlines()[0]) if fmt != "nat" else None
    if first is not None:
        assert first["source"] == json.loads(nat_input.read_text())[0]["source"]
        assert set(first["info"]) == {"pred", "gt", "kind"}
    strip = ("finished",)  # unfinished episodes gain an explicit flag on the way
    sent, came = json.loads(nat_input.read_text()), json.loads(back.read_text())
    assert [
        (r.get("source"), {k: v for k, v in r["info"].items() if k not in strip}) for r in came
    ] == [(r.get("source"), {k: v for k, v in r["info"].items() if k not in strip}) for r in sent]


OPENAI_RECORD = {
    "id": "calc-1",
    "messages": [
        {"role": "system", "content": "You can call a calculator."},
        {"role": "user", "content": "What is 17 * 23?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "calculate", "arguments": "{\"expression\": \"17 * 23\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "calculate", "content": "391"},
        {"role": "assistant", "content": "17 * 23 = 391.", "weight": 0},
    ],
    "reward": True,
    "score": 0.5,
}  # fmt: skip


def test_openai_tool_calls_round_trip_and_become_text_elsewhere(tmp_path):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(OPENAI_RECORD) + "\n")
    (original,) = load_trajectories(src, "openai")
    convert_trajectories(src, tmp_path / "o.jsonl", src="openai", dst="openai")
    (again,) = load_trajectories(tmp_path / "o.jsonl", "openai")
    assert core(again) == core(original) and again.system == original.system
    assert again.turns[0].tool_calls == [
        {"name": "calculate", "arguments": {"expression": "17 * 23"}, "id": "c1"}
    ]
    assert again.turns[-1].train is False  # weight 0 kept
    res = convert_trajectories(src, tmp_path / "s.json", src="openai", dst="sharegpt")
    record = json.loads((tmp_path / "s.json").read_text())[0]
    assert record["conversations"][2] == {
        "from": "function_call",
        "value": json.dumps({"name": "calculate", "arguments": {"expression": "17 * 23"}}),
        "loss": True,
    }
    assert "tool calls written as function_call turns (1x)" in res.notes
    convert_trajectories(src, tmp_path / "n.json", src="openai", dst="nat")
    nat = json.loads((tmp_path / "n.json").read_text())[0]
    assert nat["conversations"][1]["content"].startswith('<tool_call>\n{"name": "calculate"')
    assert nat["info"] == {"reward": True, "f1": 0.5, "finished": True}


def test_a_system_prompt_written_to_nat_loads_back_as_the_system_prompt(tmp_path):
    """The nat writer makes a system prompt a leading system turn; the nat loader reads it
    back as the system prompt (before the question), not as a turn after the question."""
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(OPENAI_RECORD) + "\n")
    (original,) = load_trajectories(src, "openai")
    out = tmp_path / "n.json"
    convert_trajectories(src, out, src="openai", dst="nat")
    assert json.loads(out.read_text())[0]["conversations"][0]["role"] == "system"
    (again,) = load(out, "nat")
    assert again.system == original.system == "You can call a calculator."
    assert [t.role for t in again.turns] == [t.role for t in original.turns]
    assert again.turns[0].role == "assistant"


def test_bad_record_names_file_record_and_field_and_writes_nothing(tmp_path):
    src = tmp_path / "chat.jsonl"
    bad = {**OPENAI_RECORD, "messages": [{"role": "user", "content": 3}]}
    src.write_text(json.dumps(OPENAI_RECORD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConvertError, match=r"chat.jsonl: line 2: field 'messages\[0\].content'"):
        convert_trajectories(src, tmp_path / "out.jsonl", src="openai", dst="sharegpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl"]


def test_what_nat_cannot_hold_is_an_error_and_writes_nothing(tmp_path):
    src = tmp_path / "chat.jsonl"
    other = {**OPENAI_RECORD, "messages": [{"role": "user", "content": "What is 2 + 2?"},
                                           *OPENAI_RECORD["messages"][2:]]}  # fmt: skip
    src.write_text(json.dumps(OPENAI_RECORD) + "\n" + json.dumps(other) + "\n")
    with pytest.raises(ConvertError, match="id 'calc-1' has two different questions"):
        convert_trajectories(src, tmp_path / "out.json", src="openai", dst="nat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl"]


def test_usage_errors(nat_input, tmp_path):
    with pytest.raises(ConvertError, match="unknown format"):
        convert_trajectories(nat_input, tmp_path / "o.jsonl", src="nat", dst="csv")
    with pytest.raises(ConvertError, match=r"must end in .json or .jsonl"):
        convert_trajectories(nat_input, tmp_path / "o.txt", src="nat", dst="openai")
    with pytest.raises(ConvertError, match=r"names a folder"):  # not a file called out.json
        convert_trajectories(nat_input, f"{tmp_path}/out.json/", src="nat", dst="openai")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ConvertError, match=r"names a folder"):
        convert_trajectories(nat_input, tmp_path / "d.json", src="nat", dst="openai")
    assert not (tmp_path / "out.json").exists()
    (tmp_path / "o.jsonl").write_text("keep")
    with pytest.raises(ConvertError, match="already exists"):
        convert_trajectories(nat_input, tmp_path / "o.jsonl", src="nat", dst="openai")
    assert (tmp_path / "o.jsonl").read_text() == "keep"
    with pytest.raises(ConvertError, match="--option for nat: format 'nat' has no option 'rols'"):
        convert_trajectories(
            nat_input, tmp_path / "p.jsonl", src="nat", dst="openai", options={"rols": 1}
        )


def test_cli_summary(nat_input, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "convert", "data", "--from", "nat", "--to",
         "agentinstruct", str(nat_input), str(tmp_path / "ai.jsonl")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == (
        f"convert data: wrote 40 trajectories to {tmp_path / 'ai.jsonl'} "
        "(nat -> agentinstruct, 0 skipped)"
    )


def test_alpaca_keeps_a_first_assistant_turn_out_of_the_question(tmp_path):
    """An opening assistant turn without Thought:/Action: gets "Thought: " (and a note), so the
    loader does not read it as the question's preamble."""
    src = tmp_path / "in.jsonl"
    rec = {
        "id": "a",
        "messages": [
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "I will use the calculator."},
            {"role": "tool", "content": "5"},
            {"role": "assistant", "content": "The answer is 5."},
        ],
        "reward": True,
    }
    src.write_text(json.dumps(rec) + "\n")
    res = convert_trajectories(src, tmp_path / "out.jsonl", src="openai", dst="alpaca")
    (again,) = load_trajectories(tmp_path / "out.jsonl", "alpaca")
    assert again.question == "What is 2+3?"
    assert [(t.role, t.content, t.train) for t in again.turns] == [
        ("assistant", "Thought: I will use the calculator.", True),
        ("observation", "Observation: 5", False),
        ("assistant", "Thought: The answer is 5.", True),
    ]
    assert "'Thought: ' prefix added to the first assistant turn (1x)" in res.notes
    assert "'Thought: ' prefix added after an observation (1x)" in res.notes


def test_a_nat_folder_does_not_read_its_question_and_prompt_files_as_trajectories(
    nat_input, tmp_path
):
    """A folder input (the release layout): its questions.jsonl and prompt.json are found and
    used as such, not read as trajectory records too."""
    folder = nat_input.parent
    res = convert_trajectories(folder, tmp_path / "out.jsonl", src="nat", dst="openai")
    assert res.num_records == 40
    assert res.options == {
        "questions": str(folder / "questions.jsonl"),
        "prompt": str(folder / "prompt.json"),
    }
    assert [core(t) for t in load(tmp_path / "out.jsonl", "openai")] == [
        core(t) for t in load(nat_input, "nat")
    ]
    # the same when they are given as options, and for the loader itself
    given = {"questions": str(folder / "questions.jsonl"), "prompt": str(folder / "prompt.json")}
    assert len(load_trajectories(folder, "nat", **given)) == 40
    # named explicitly as a trajectory file, a file is still read as one
    with pytest.raises(DataError, match=r"prompt\.json: record 0: field 'id'"):
        load_trajectories([nat_input, folder / "prompt.json"], "nat", **given)
    only = tmp_path / "only"
    only.mkdir()
    for name in ("questions.jsonl", "prompt.json"):
        shutil.copy(folder / name, only)
    with pytest.raises(ConvertError, match="no trajectory file: the folder holds only the"):
        convert_trajectories(only, tmp_path / "none.jsonl", src="nat", dst="openai")
