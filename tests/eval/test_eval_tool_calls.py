"""``loop.protocol: tool_calls``: the agent calls its tools the way its chat template writes calls.

The model is a stand-in server on 127.0.0.1 whose replies are fixed per question and turn; the
prompts go through natscale's llama2 template (tools in the system prompt, calls as
``<tool_call>`` JSON blocks), the tools are the real ones, and the episodes go back through
``natscale prepare`` (``format: openai``) to the same tokens.
"""

from __future__ import annotations

import json

import pytest

from natscale.config.eval import EvalConfig
from natscale.config.prepare import PrepareConfig
from natscale.data.formats import load_trajectories
from natscale.data.nat import format_question, question_template
from natscale.data.prepare import prepare
from natscale.data.render import Renderer, load_tokenizer, trajectory_messages
from natscale.eval.errors import EvalError
from natscale.eval.prompting import Prompter
from natscale.eval.run import run_eval, summary_line

from .conftest import TOKENIZER, completions_endpoint, endpoint_fields, read_jsonl


def call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# per question, the model's turns: the n-th reply answers a prompt with n tool results in it
REPLIES = {
    "What is 17 * 23?": [
        "I will multiply.\n" + call("calculate", expression="17 * 23"),
        call("finish", answer="391"),
    ],
    "What is 2 + 2?": ["4"],  # a chat agent's answer, without a call
    "What is 3 + 3?": ['<tool_call>\n{"name": "calculate", "arguments": {"expression": "3 + 3"\n'],
    "What is 4 + 4?": [call("lookup", query="4 + 4")],
    "What is 5 + 5?": [call("calculate", expr="5 + 5"), call("finish", answer="11")],
}
QUESTIONS = [
    {"id": f"q{k}", "question": q, "answer": f"#### {a}"}
    for k, (q, a) in enumerate(zip(REPLIES, (391, 4, 6, 8, 10), strict=True))
]


def _reply(prompt: str) -> tuple[str, str]:
    question = next(q for q in REPLIES if q in prompt)
    return REPLIES[question][prompt.count('<tool_call>\n{"name": "')], "stop"


@pytest.fixture
def endpoint():
    with completions_endpoint(_reply) as served:
        yield served


def _fields(url: str, tmp_path, **extra) -> dict:
    fields = endpoint_fields(
        url,
        tmp_path,
        QUESTIONS,
        prompt={"tokenizer": str(TOKENIZER), "template": "llama2", "system": "Use the tools."},
        loop={"protocol": "tool_calls"},
        openai={"concurrency": 1},
    )
    fields.update(extra)
    return fields


def test_an_agent_with_native_tool_calls(endpoint, tmp_path):
    url, prompts = endpoint
    summary = run_eval(EvalConfig.model_validate(_fields(url, tmp_path)))
    eps = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "episodes.jsonl")}
    info = {k: e["info"] for k, e in eps.items()}
    assert info["q0"]["pred"] == "391" and info["q0"]["reward"] is True
    assert info["q1"]["pred"] == "4" and info["q1"]["reward"] is True  # answered in text
    assert info["q2"]["failure"] == "unparseable_action" and "JSON" in info["q2"]["error"]
    assert info["q3"]["failure"] == "unknown_tool" and "'lookup'" in info["q3"]["error"]
    # a call that does not fit the tool's schema is an error observation; the episode goes on
    assert info["q4"]["pred"] == "11" and info["q4"]["reward"] is False
    tool_msg = eps["q4"]["messages"][3]
    assert tool_msg["role"] == "tool" and tool_msg["content"].startswith("Error: calculate takes")
    assert summary["protocol"] == "tool_calls" and summary["failures"]["unknown_tool"] == 1
    assert summary["response_template"] == "tool_call_json"  # what llama2 writes, found by itself
    assert "accuracy 40.0%" in summary_line(summary)

    # the record is the OpenAI chat form: the bare question, the structured call, its result
    msgs = eps["q0"]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert msgs[1]["content"] == "What is 17 * 23?"
    assert msgs[2]["content"] == "I will multiply."
    (c,) = msgs[2]["tool_calls"]
    assert c["function"] == {"name": "calculate", "arguments": '{"expression": "17 * 23"}'}
    assert msgs[3] == {
        "role": "tool",
        "tool_call_id": c["id"],
        "name": "calculate",
        "content": "391",
    }
    assert [t["function"]["name"] for t in eps["q0"]["tools"]] == ["calculate", "finish"]

    # the second prompt: the tools in the system prompt, the call as the template writes it
    second = next(p for p in prompts if "17 * 23" in p and "391" in p)
    assert '"name": "finish"' in second and "<tools>" in second
    assert (
        'I will multiply.\n<tool_call>\n{"name": "calculate", "arguments": {"expression": '
        in second
    )
    assert second.endswith("[INST] 391 [/INST]")
    assert "Observation" not in "".join(prompts)


def test_tool_call_episodes_prepare_to_the_tokens_the_agent_saw(endpoint, tmp_path):
    url, _ = endpoint
    cfg = EvalConfig.model_validate(_fields(url, tmp_path))
    summary = run_eval(cfg)
    episodes = tmp_path / "run" / "episodes.jsonl"
    result = prepare(
        PrepareConfig.model_validate(
            {
                "output": str(tmp_path / "data"),
                "sources": [
                    {"format": "openai", "paths": [str(episodes)], "success_field": "info.reward"}
                ],
                "render": {"tokenizer": str(TOKENIZER), "template": "llama2"},
                "pack": {"max_seq_len": 2048},
            }
        ),
        progress=False,
    )
    wins = round(summary["metrics"]["accuracy"]["value"] * len(QUESTIONS))
    assert result.stats["per_class"]["success"]["examples"] == wins
    # every prompt the agent was given is a prefix of the training example, untrained
    tok = load_tokenizer(TOKENIZER)
    prompter = Prompter(cfg.prompt, tok)
    prompter.tools = read_jsonl(episodes)[0]["tools"]
    renderer = Renderer(tok, "llama2")
    traj = load_trajectories([str(episodes)], "openai", success_field="info.reward")[0]
    query = format_question(
        traj.question, question_template(0, cfg.prompt.strategy, prompter.task_prompt)
    )
    full = renderer.encode(trajectory_messages(traj, query), tools=traj.tools)
    ep = read_jsonl(episodes)[0]
    history = ep["messages"][2:]
    for turn in range(len(history)):
        if history[turn]["role"] != "assistant":
            continue
        past = [
            {**m, "tool_calls": _calls(m)} if m.get("tool_calls") else m for m in history[:turn]
        ]
        ids = prompter.ids(prompter.messages(ep["question"], past))
        assert full.ids[: len(ids)].tolist() == ids
        assert not full.mask[len(ids) - 1] and full.mask[len(ids)]


def _calls(message: dict) -> list[dict]:
    return [
        {
            "id": c["id"],
            "name": c["function"]["name"],
            "arguments": json.loads(c["function"]["arguments"]),
        }
        for c in message["tool_calls"]
    ]


def test_bad_tool_call_settings_are_refused(tmp_path):
    fields = _fields("http://127.0.0.1:9/v1", tmp_path)
    with pytest.raises(ValueError, match=r"set loop\.protocol: tool_calls"):
        EvalConfig.model_validate({**fields, "loop": {}, "tools": {"schemas": "s.json"}})
    bad = tmp_path / "schemas.json"
    bad.write_text(json.dumps([{"name": "lookup", "parameters": {}}]))
    with pytest.raises(
        EvalError, match=r"tools.schemas: schemas for tools that are not configured: \['lookup'\]"
    ):
        run_eval(EvalConfig.model_validate({**fields, "tools": {"schemas": str(bad)}}))
    template = tmp_path / "response.json"
    template.write_text(json.dumps({"fields": {}}))
    with pytest.raises(
        EvalError,
        match=r"prompt.response_template: .*response.json: not a response template .*fields must be",
    ):
        run_eval(
            EvalConfig.model_validate(
                {**fields, "prompt": {**fields["prompt"], "response_template": str(template)}}
            )
        )


def test_react_data_converted_to_tool_calls_replays_to_the_same_episodes(tmp_path):
    """The bundled ReAct trajectories, converted (`convert data --tool-calls`), replayed through
    the tool-call loop: the same conversations, structured, and the same rewards."""
    from natscale.cli.main import main

    from .conftest import DATA, bundled_by_id

    converted = tmp_path / "calls.jsonl"
    src = str(DATA / "trajectories.json")
    args = ["convert", "data", "--from", "nat", "--to", "openai", src, str(converted)]
    assert main([*args, "--tool-calls"]) == 0
    records = {}
    for rec in read_jsonl(converted):
        records.setdefault(rec["id"], rec)
    instruction = records["math-00000"]["messages"][0]["content"]
    fields = {
        "backend": "scripted",
        "output": str(tmp_path / "run"),
        "questions": [str(DATA / "questions.jsonl")],
        "limit": 300,
        "scripted": {"trajectories": [str(converted)]},
        "prompt": {"system": instruction},
        "loop": {"protocol": "tool_calls"},
        "bootstrap": 0,
    }
    summary = run_eval(EvalConfig.model_validate(fields))
    bundled = bundled_by_id()
    episodes = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    assert len(episodes) == 300 and summary["protocol"] == "tool_calls"
    for ep in episodes:
        want = bundled[ep["id"]][0]["info"]
        assert ep["messages"] == records[ep["id"]]["messages"], ep["id"]
        assert ep["tools"] == records[ep["id"]]["tools"]
        assert (ep["info"]["reward"], ep["info"]["pred"]) == (want["reward"], want["pred"])
        assert (ep["info"]["failure"] == "turn_limit") == (want["kind"] == "unfinished")


def test_data_from_native_tools_defaults_the_tool_call_loop(tmp_path):
    """--data of a dataset whose sources turned ReAct steps into calls (`native_tools`): the eval
    runs the tool-call loop with those tools unless the config says otherwise."""
    from natscale.cli.eval import load_eval_config

    from .conftest import DATA, scripted_fields, write_config

    fields = {
        "output": str(tmp_path / "data"),
        "limit": 20,
        "sources": [
            {
                "format": "nat",
                "paths": [str(DATA / "trajectories.json")],
                "questions": [str(DATA / "questions.jsonl")],
                "prompt": str(DATA / "prompt.json"),
                "native_tools": ["calculate"],
            }
        ],
        "render": {"tokenizer": str(TOKENIZER), "template": "llama2"},
        "pack": {"max_seq_len": 4096},
    }
    prepare(PrepareConfig.model_validate(fields), progress=False)
    base = {k: v for k, v in scripted_fields(tmp_path / "run").items() if k != "prompt"}
    cfg = load_eval_config(
        str(write_config(tmp_path / "e.yaml", **base)), [], str(tmp_path / "data")
    )
    assert cfg.loop.protocol == "tool_calls" and cfg.tools.names == ["calculate"]
    mine = write_config(tmp_path / "r.yaml", **base, loop={"protocol": "react"})
    assert load_eval_config(str(mine), [], str(tmp_path / "data")).loop.protocol == "react"


def test_data_from_native_tools_offers_them_in_the_training_order(tmp_path):
    """native_tools: [search, calculate]: training offers calculate, search, finish (built-ins by
    name), and so does the eval from --data, whatever order the source named them in: its
    prompt is token for token the prompt of a training example."""
    import datasets

    from natscale.cli.eval import load_eval_config
    from natscale.eval.run import _load_tools

    from .conftest import DATA, scripted_fields, write_config

    source = {
        "format": "nat",
        "paths": [str(DATA / "trajectories.json")],
        "questions": [str(DATA / "questions.jsonl")],
        "prompt": str(DATA / "prompt.json"),
        "native_tools": ["search", "calculate"],
    }
    fields = {
        "output": str(tmp_path / "data"),
        "limit": 20,
        "sources": [source],
        "render": {"tokenizer": str(TOKENIZER), "template": "llama2"},
        "pack": {"max_seq_len": 4096},
    }
    prepare(PrepareConfig.model_validate(fields), progress=False)
    trained = json.loads((tmp_path / "data" / "stats.json").read_text())["tools"]
    assert [t["function"]["name"] for t in trained] == ["calculate", "search", "finish"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": "Paris", "text": "the capital of France"}) + "\n")
    base = {k: v for k, v in scripted_fields(tmp_path / "run").items() if k != "prompt"}
    base["tools"] = {"corpus": str(corpus)}
    cfg = load_eval_config(
        str(write_config(tmp_path / "e.yaml", **base)), [], str(tmp_path / "data")
    )
    assert cfg.tools.names == ["calculate", "search"]
    tools = _load_tools(cfg)
    assert [t.schema for t in tools.values()] == trained
    prompter = Prompter(cfg.prompt, load_tokenizer(cfg.prompt.tokenizer))
    prompter.tools = [t.schema for t in tools.values()]
    rows = datasets.load_from_disk(str(tmp_path / "data"))["input_ids"]
    text = "\n".join(f" {' '.join(map(str, r))} " for r in rows)
    prompts = [
        prompter.ids(prompter.messages(q["question"], []))
        for q in read_jsonl(DATA / "questions.jsonl")[:20]
    ]
    assert any(f" {' '.join(map(str, p))} " in text for p in prompts)


def test_data_of_tool_call_trajectories_defaults_their_tools(endpoint, tmp_path):
    """--data of a dataset whose trajectories offered tools (here: the agent's own tool-call
    episodes, prepared as `format: openai`): the eval runs the tool-call loop and offers those
    tools with the schemas they were trained with; one that is not built in needs tools.user."""
    from natscale.cli.eval import load_eval_config

    from .conftest import write_config

    url, prompts = endpoint
    run_eval(EvalConfig.model_validate(_fields(url, tmp_path)))
    episodes = tmp_path / "episodes.jsonl"  # the episodes, with the tools worded their own way
    records = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    for rec in records:
        rec["tools"][0]["function"]["description"] = "Exact arithmetic, as trained."
    episodes.write_text("".join(json.dumps(r) + "\n" for r in records))
    trained_tools = records[0]["tools"]

    def prepared(name: str, path) -> str:
        source = {"format": "openai", "paths": [str(path)], "success_field": "info.reward"}
        fields = {
            "output": str(tmp_path / name),
            "sources": [source],
            "render": {"tokenizer": str(TOKENIZER), "template": "llama2"},
            "pack": {"max_seq_len": 2048},
        }
        prepare(PrepareConfig.model_validate(fields), progress=False)
        return str(tmp_path / name)

    data = prepared("data", episodes)
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["tools"] == trained_tools
    base = {k: v for k, v in _fields(url, tmp_path).items() if k != "loop"}
    base["output"] = str(tmp_path / "again")
    cfg = load_eval_config(str(write_config(tmp_path / "e.yaml", **base)), [], data)
    assert cfg.loop.protocol == "tool_calls" and cfg.tools.names == ["calculate"]
    assert cfg.tools.schemas == trained_tools
    prompts.clear()
    summary = run_eval(cfg)
    assert summary["protocol"] == "tool_calls" and summary["episodes"] == len(QUESTIONS)
    assert all("Exact arithmetic, as trained." in p for p in prompts)  # the trained schema

    other = tmp_path / "lookup.jsonl"
    record = read_jsonl(episodes)[0]
    record["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    other.write_text(json.dumps(record) + "\n")
    cfg = load_eval_config(
        str(write_config(tmp_path / "e.yaml", **base)), [], prepared("d2", other)
    )
    assert cfg.tools.names == ["lookup"]
    with pytest.raises(EvalError, match=r"unknown tool 'lookup'.*tools\.user"):
        run_eval(cfg.model_copy(update={"output": str(tmp_path / "third")}))
