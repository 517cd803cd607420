import inspect
import json
from typing import get_args

import pytest

from natscale.data.errors import DataError, Issues
from natscale.data.formats import FORMATS, load_trajectories
from natscale.data.formats.alpaca import split_react
from natscale.data.formats.openai import openai_record
from natscale.data.formats.writing import Notes
from natscale.data.prompts import load_task_prompt

from .nat_test_data import NAT_TRAJ, PROMPT, QUESTION, write_json, write_jsonl

# ---------------------------------------------------------------- NAT release


def test_nat_release_joins_questions_and_prompt(nat_files):
    traj_file, questions, prompt = nat_files
    trajs = load_trajectories(traj_file, "nat", questions=questions, prompt=prompt)
    assert len(trajs) == 2
    t = trajs[0]
    assert t.id == "q1" and t.question == "What is 2 + 4?" and t.task == "math"
    assert t.instruction == PROMPT["instruction"]
    assert t.acknowledgement == PROMPT["acknowledgement"]
    assert [x.role for x in t.turns] == ["assistant", "observation", "assistant", "observation"]
    assert [x.train for x in t.turns] == [True, False, True, False]
    assert t.outcome.success is True and trajs[1].outcome.success is False
    assert t.meta["answer"].endswith("#### 6") and t.meta["pred"] == "6"
    assert t.meta["file"] == str(traj_file) and t.meta["record"] == "record 0"


def test_nat_release_jsonl_json_questions_and_directory(tmp_path):
    d = tmp_path / "trajs"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [NAT_TRAJ])
    write_json(d / "b.json", [NAT_TRAJ | {"id": "q2"}])
    qs = write_json(tmp_path / "q.json", [QUESTION, QUESTION | {"id": "q2", "question": "Q2?"}])
    trajs = load_trajectories(d, "nat", questions=qs)
    assert [t.id for t in trajs] == ["q1", "q2"] and trajs[1].question == "Q2?"
    assert trajs[0].instruction == "" and trajs[0].acknowledgement is None


def test_nat_release_unfinished_is_marked(tmp_path):
    rec = json.loads(json.dumps(NAT_TRAJ))
    rec["info"] = {"reward": False, "pred": None}
    rec["question"] = "inline?"
    (t,) = load_trajectories(write_json(tmp_path / "t.json", [rec]), "nat")
    assert t.finished is False and t.question == "inline?"


def test_paper_prompt_layout(tmp_path):
    paper = {
        "zero-shot": {
            "conversations": [
                {"role": "user", "content": "Solve it."},
                {"role": "assistant", "content": "I've understood your instruction, start please."},
            ],
            "question_prompt": "Question: {question}",
        },
        "zero-shot-target-aware": {
            "conversations": [{"role": "user", "content": "Solve it."}],
            "correct_question_prompt": "Question: {question}. ok",
            "incorrect_question_prompt": "Question: {question}. bad",
        },
        "four": {
            "conversations": [],
            **{
                f"class_{k}_question_prompt": f"[{k}] Question: {{question}}." for k in (1, 2, 3, 4)
            },
        },
    }
    path = write_json(tmp_path / "p.json", paper)
    p = load_task_prompt(path)
    assert p.instruction == "Solve it." and p.templates["success"].endswith(". ok")
    assert load_task_prompt(path, "zero-shot").acknowledgement.startswith("I've understood")
    assert load_task_prompt(path, "four").bucket_templates[0].startswith("[4]")
    with pytest.raises(DataError, match="variant 'nope'"):
        load_task_prompt(path, "nope")


# ---------------------------------------------------------------- other formats


def test_sharegpt_and_agentinstruct(tmp_path):
    rec = {
        "id": "os_1",
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "You operate a shell.", "loss": False},
            {"from": "gpt", "value": "OK.", "loss": False},
            {"from": "human", "value": "Count files in /etc", "loss": False},
            {"from": "gpt", "value": "Act: bash ls /etc | wc -l", "loss": True},
            {"from": "observation", "value": "212"},
            {"from": "gpt", "value": "Act: answer(212)"},
        ],
    }  # as published: no success field (SFT data; see test_real_data for preparing it)
    path = write_jsonl(tmp_path / "a.jsonl", [rec])
    (t,) = load_trajectories(path, "agentinstruct")
    assert (
        t.system == "sys" and t.instruction == "You operate a shell." and t.acknowledgement == "OK."
    )
    assert t.question == "Count files in /etc" and t.outcome.success is None
    assert [x.role for x in t.turns] == ["assistant", "observation", "assistant"]
    assert [x.train for x in t.turns] == [True, False, True]
    (t0,) = load_trajectories(path, "sharegpt", question_turn=1)
    assert t0.question == t.question
    with pytest.raises(DataError, match=r"has 2 user turn\(s\); the question is user turn 2"):
        load_trajectories(path, "sharegpt", question_turn=2)
    rec["conversations"].insert(3, {"from": "gpt", "value": "again"})
    path = write_jsonl(tmp_path / "b.jsonl", [rec])
    with pytest.raises(DataError, match=r"expected \[user\] or \[user, assistant\]"):
        load_trajectories(path, "agentinstruct")


def test_openai_messages_with_tool_calls(tmp_path):
    rec = {
        "messages": [
            {"role": "system", "content": "You can calculate."},
            {"role": "user", "content": [{"type": "text", "text": "17 * 23?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calculate", "arguments": '{"expression": "17 * 23"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "calculate", "content": "391"},
            {"role": "assistant", "content": "391", "weight": 0},
        ],
        "reward": False,
    }
    (t,) = load_trajectories(write_jsonl(tmp_path / "o.jsonl", [rec]), "openai")
    assert t.system == "You can calculate." and t.question == "17 * 23?"
    call = t.turns[0].tool_calls[0]
    assert call == {"name": "calculate", "arguments": {"expression": "17 * 23"}, "id": "c1"}
    assert t.turns[1].role == "observation" and t.turns[1].name == "calculate"
    assert t.turns[2].train is False and t.outcome.success is False
    assert t.id == "o.jsonl:1"


# OpenAI's legacy function-calling fine-tuning layout (before tool_calls)
LEGACY_FUNCTION_CALL = {
    "messages": [
        {"role": "user", "content": "What is the weather like in Boston?"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "weather", "arguments": '{"location": "Boston, MA"}'},
        },
        {"role": "function", "name": "weather", "content": '{"temperature": "22"}'},
        {"role": "assistant", "content": "It is 22 degrees in Boston."},
    ],
    "functions": [
        {
            "name": "weather",
            "description": "Get the current weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        }
    ],
}


def test_openai_legacy_function_call_is_a_tool_call(tmp_path):
    """An assistant's function_call is one call (not an empty trained turn), the function
    message its result, and the top-level functions list the tool schemas."""
    (t,) = load_trajectories(write_jsonl(tmp_path / "o.jsonl", [LEGACY_FUNCTION_CALL]), "openai")
    assert t.turns[0].role == "assistant" and t.turns[0].content == ""
    assert t.turns[0].tool_calls == [{"name": "weather", "arguments": {"location": "Boston, MA"}}]
    assert t.turns[1].role == "observation" and t.turns[1].name == "weather"
    assert [s["function"]["name"] for s in t.tools] == ["weather"]
    assert t.tools[0]["function"]["parameters"]["properties"] == {"location": {"type": "string"}}
    # a record's own tools win; tools_field: null ignores both
    own = {"type": "function", "function": {"name": "other", "parameters": {}}}
    path = write_jsonl(tmp_path / "t.jsonl", [{**LEGACY_FUNCTION_CALL, "tools": [own]}])
    (t,) = load_trajectories(path, "openai")
    assert [s["function"]["name"] for s in t.tools] == ["other"]
    (t,) = load_trajectories(path, "openai", tools_field=None)
    assert t.tools is None
    # both forms in one message: an error naming the message
    both = json.loads(json.dumps(LEGACY_FUNCTION_CALL))
    fn = {"name": "weather", "arguments": "{}"}
    both["messages"][1]["tool_calls"] = [{"id": "c1", "type": "function", "function": fn}]
    with pytest.raises(DataError, match="both tool_calls and a legacy function_call") as err:
        load_trajectories(write_jsonl(tmp_path / "b.jsonl", [both]), "openai")
    assert err.value.field == "messages[1].function_call"


def test_openai_tool_results_keep_the_call_they_answer(tmp_path):
    """A tool message's tool_call_id is kept (parallel results may come back in any order); one
    that answers no call before it is an error naming the record and field (or skipped)."""

    def call(cid: str, city: str) -> dict:
        args = json.dumps({"city": city})
        return {"id": cid, "type": "function", "function": {"name": "weather", "arguments": args}}

    def record(answered: str) -> dict:
        calls = [call("callParis", "Paris"), call("callRome0", "Rome")]
        return {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "tool", "tool_call_id": answered, "content": "Rome: 30C"},
                {"role": "tool", "content": "Paris: 20C"},
                {"role": "assistant", "content": "Paris 20C, Rome 30C."},
            ],
            "reward": True,
        }

    path = write_jsonl(tmp_path / "o.jsonl", [record("callRome0"), record("callLisbon")])
    with pytest.raises(DataError) as err:
        load_trajectories(path, "openai")
    assert str(err.value).startswith(f"{path}: line 2: field 'messages[2].tool_call_id': ")
    assert "'callLisbon' answers no call" in str(err.value)
    issues = Issues()
    (t,) = load_trajectories(path, "openai", on_error="skip", issues=issues)
    assert issues.as_dict() == {"unknown_tool_call_id": 1}
    assert [u.tool_call_id for u in t.turns[1:3]] == ["callRome0", None]
    written = openai_record(t, Notes())["messages"]  # convert writes each its call's id
    assert [m.get("tool_call_id") for m in written[2:4]] == ["callRome0", "callParis"]


def test_fireact_alpaca_split_and_reward_from_text(tmp_path):
    output = (
        "Thought: I need to search X.\nAction: search[X]\nObservation: X is a thing.\n"
        "more observation text\nThought: done.\nAction: finish[thing]\n"
        "Observation: Episode finished, reward = True\n"
    )
    rec = {"instruction": "What is X?", "input": "", "output": output}
    (t,) = load_trajectories(write_json(tmp_path / "f.json", [rec]), "fireact")
    assert t.question == "What is X?" and t.outcome.success is True
    assert [x.role for x in t.turns] == ["assistant", "observation", "assistant", "observation"]
    assert t.turns[1].content == "Observation: X is a thing.\nmore observation text"
    assert t.turns[2].content == "Thought: done.\nAction: finish[thing]"
    assert [x.role for x in split_react("Observation 1: a\nObservation 2: b")] == [
        "observation",
        "observation",
    ]


def test_parquet_through_arrow(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rec = {"instruction": "Q?", "input": "", "output": "Action: finish[a]", "reward": True}
    pq.write_table(pa.Table.from_pylist([rec, rec]), tmp_path / "d.parquet")
    trajs = load_trajectories(tmp_path / "d.parquet", "alpaca")
    assert len(trajs) == 2 and trajs[1].meta["record"] == "record 1"


def _schema(name: str, param: str) -> dict:
    props = {param: {"type": "string"}}
    return {"type": "function", "function": {"name": name, "parameters": {"properties": props}}}


def test_parquet_dict_arguments_and_schemas_keep_only_their_own_members(tmp_path):
    """Arrow merges the argument objects (and tool schemas) of all records into one struct, so
    each read back with the others' members as nulls; those nulls are dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def record(tool: str, param: str, value: str) -> dict:
        call = {"id": "c1", "type": "function",
                "function": {"name": tool, "arguments": {param: value}}}  # fmt: skip
        return {
            "messages": [
                {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "A"},
            ],
            "tools": [_schema(tool, param)],
            "reward": True,
        }

    records = [record("calculate", "expression", "17 * 23"), record("search", "query", "boston")]
    path = tmp_path / "calls.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    calc, search = load_trajectories(path, "openai")
    assert calc.turns[0].tool_calls[0]["arguments"] == {"expression": "17 * 23"}
    assert search.turns[0].tool_calls[0]["arguments"] == {"query": "boston"}
    assert calc.tools == [_schema("calculate", "expression")]
    assert search.tools == [_schema("search", "query")]
    # an explicit null argument survives in the JSON-string form
    fn = records[0]["messages"][1]["tool_calls"][0]["function"]
    fn["arguments"] = json.dumps({"expression": "1", "unit": None})
    records[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"query": "x"}'
    pq.write_table(pa.Table.from_pylist(records), path)
    calc, _ = load_trajectories(path, "openai")
    assert calc.turns[0].tool_calls[0]["arguments"] == {"expression": "1", "unit": None}


# ---------------------------------------------------------------- errors


def _bad_files(tmp_path):
    good = json.dumps(NAT_TRAJ)
    no_role = json.loads(good)
    del no_role["conversations"][1]["role"]
    bad_role = json.loads(good)
    bad_role["conversations"][1]["role"] = "bot"
    empty = json.loads(good) | {"conversations": []}
    orphan = json.loads(good) | {"id": "nobody"}
    lines = [
        good.encode(),
        b'{"id": "q1", "conversations": [',
        json.dumps(no_role).encode(),
        json.dumps(bad_role).encode(),
        json.dumps(empty).encode(),
        good.replace("Thought: add.", "Thought: caf\\u00e9")
        .encode()
        .replace(b"caf\\u00e9", b"caf\xe9"),
        json.dumps(orphan).encode(),
        b"[1, 2]",
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, write_jsonl(tmp_path / "q.jsonl", [QUESTION])


@pytest.mark.parametrize(
    ("line", "field", "reason_text"),
    [
        (2, None, "malformed JSON"),
        (3, "conversations[1].role", "missing required field"),
        (4, "conversations[1].role", "unknown role 'bot'"),
        (5, "conversations", "conversation is empty"),
        (6, None, "not UTF-8"),
        (7, "id", "has no question"),
        (8, None, "expected a JSON object"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, line, field, reason_text):
    path, qs = _bad_files(tmp_path)
    # keep only the good first line and the bad one, so the first error is the one under test
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(lines[0] + b"\n" + b"\n" * (line - 2) + lines[line - 1] + b"\n")
    with pytest.raises(DataError) as exc:
        load_trajectories(path, "nat", questions=qs, empty="error")
    msg = str(exc.value)
    assert msg.startswith(f"{path}: line {line}: ")
    assert reason_text in msg
    if field:
        assert f"field {field!r}" in msg


def test_skip_counts_every_reason(tmp_path):
    path, qs = _bad_files(tmp_path)
    issues = Issues()
    trajs = load_trajectories(path, "nat", questions=qs, on_error="skip", issues=issues)
    assert len(trajs) == 1
    assert issues.as_dict() == {
        "empty_conversation": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "non_utf8": 1,
        "not_an_object": 1,
        "unknown_question_id": 1,
        "unknown_role": 1,
    }


def test_file_level_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="file not found") as err:
        load_trajectories(tmp_path / "nope.json", "nat")
    assert "check the path" in str(err.value) and "prepare config" not in str(
        err.value
    )  # eval and convert data read files too
    assert "relative paths" not in str(err.value)  # an absolute path: no working-directory hint
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"relative paths are taken from {tmp_path}"):
        load_trajectories("nope.json", "nat")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1,}]')
    with pytest.raises(DataError, match=r"bad.json: malformed JSON at line 1 column 11"):
        load_trajectories(bad, "nat", on_error="skip")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'[\n{"id": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin.json: bytes at offset 13 \(line 2\) are not UTF-8"):
        load_trajectories(latin, "nat")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="no data files"):
        load_trajectories(empty_dir, "nat")
    with pytest.raises(ValueError, match="unknown trajectory format 'csv'"):
        load_trajectories(bad, "csv")


def test_wrong_types_are_named(tmp_path):
    rec = json.loads(json.dumps(NAT_TRAJ))
    rec["conversations"][0]["loss"] = "yes"
    rec["question"] = "q"
    with pytest.raises(
        DataError, match=r"record 0: field 'conversations\[0\].loss': expected bool"
    ):
        load_trajectories(write_json(tmp_path / "t.json", [rec]), "nat")
    rec = {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match=r"field 'messages\[0\].content'"):
        load_trajectories(write_jsonl(tmp_path / "o.jsonl", [rec]), "openai")


def test_task_prompt_file_errors(tmp_path):
    bad = write_json(tmp_path / "p.json", {"instruction": "x", "templates": {"success": "no slot"}})
    with pytest.raises(DataError, match=r"p.json: field 'templates.success': template has no"):
        load_task_prompt(bad)
    with pytest.raises(DataError, match="task prompt file not found"):
        load_task_prompt(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="not a UTF-8 JSON file"):
        load_task_prompt(tmp_path / "broken.json")


# ---------------------------------------------------------------- the registry


def test_every_format_owns_its_loader_writer_and_options_model():
    from natscale.config.prepare import PrepareConfig

    for name, fmt in FORMATS.items():
        assert name in get_args(fmt.source.model_fields["format"].annotation)
        assert callable(fmt.write)
        params = inspect.signature(fmt.load).parameters
        for option in fmt.option_names():  # the options model holds the only defaults
            assert params[option].default is inspect.Parameter.empty, (name, option)
    raw = {"sources": [{"format": n, "paths": ["t.json"]} for n in FORMATS]}
    config = PrepareConfig.model_validate({**raw, "render": {"tokenizer": "tok"}})
    assert [type(s) for s in config.sources] == [f.source for f in FORMATS.values()]


def test_loader_options_are_the_models_defaults_then_the_presets_then_the_given(tmp_path):
    assert FORMATS["nat"].loader_options({}) == {
        "questions": None,
        "prompt": None,
        "prompt_variant": None,
        "task": "",
        "success_field": "info.reward",
        "score_field": "info.f1",
    }
    assert FORMATS["openai"].loader_options({})["success_field"] == "reward"
    assert FORMATS["sharegpt"].loader_options({})["question_turn"] == 0
    assert FORMATS["agentinstruct"].loader_options({})["question_turn"] == 1
    assert FORMATS["agentinstruct"].loader_options({"question_turn": 2})["question_turn"] == 2
    path = write_jsonl(tmp_path / "o.jsonl", [{"messages": []}])
    with pytest.raises(TypeError, match="format 'openai' has no option 'question_field'; its"):
        load_trajectories(path, "openai", question_field="q")


@pytest.mark.parametrize("weight", [0.5, 2, -1])
def test_openai_message_weight_other_than_0_or_1_is_refused(tmp_path, weight):
    """Any weight but 0 trained at full weight: 0.5 did not mean half."""
    path = tmp_path / "w.jsonl"
    record = {
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A.", "weight": weight},
        ]
    }
    write_jsonl(path, [record])
    with pytest.raises(DataError, match=r"messages\[1\]\.weight") as exc:
        load_trajectories(path, "openai")
    assert exc.value.reason == "bad_value" and "strategy.weights" in str(exc.value)
    record["messages"][1]["weight"] = 0
    write_jsonl(path, [record])
    assert load_trajectories(path, "openai")[0].turns[-1].train is False
