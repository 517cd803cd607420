"""``openai.api: chat``: the agent runs on a ``/v1/chat/completions`` server, which renders the
messages with its own chat template and parses the tool calls itself.

The server is a stand-in on 127.0.0.1 whose replies are fixed per question and turn; what is
checked is what natscale sends (the NAT-marked question, the history, the tools) and how it
reads what comes back (reasoning fields, structured calls, a full context). The same against a
real ``transformers serve``: tests/eval/test_eval_served.py (slow).
"""

from __future__ import annotations

import json

import pytest

from natscale.config.eval import EvalConfig
from natscale.eval.backends.openai import EndpointError
from natscale.eval.run import run_eval

from .conftest import DATA, endpoint_fields, openai_endpoint, read_jsonl

SUCCESS = "Generate a sequence of Thought and Action steps to solve the problem correctly."
QUESTIONS = [
    {"id": "q0", "question": "What is 17 * 23?", "answer": "#### 391"},
    {"id": "q1", "question": "What is 2 + 2?", "answer": "#### 4"},
    {"id": "q2", "question": "What is 3 + 3?", "answer": "#### 6"},
]


def _fields(url: str, tmp_path, **extra) -> dict:
    fields = endpoint_fields(
        url,
        tmp_path,
        QUESTIONS,
        prompt={"file": str(DATA / "prompt.json")},
        openai={"api": "chat", "concurrency": 1},
        loop={"max_new_tokens": 64},
    )
    for key, value in extra.items():
        fields[key] = {**fields.get(key, {}), **value} if isinstance(value, dict) else value
    return fields


def _chat_reply(message: dict, reason: str = "stop", tokens: int = 7) -> tuple[int, dict]:
    reply = {"choices": [{"message": {"role": "assistant", **message}, "finish_reason": reason}]}
    return 200, {**reply, "usage": {"completion_tokens": tokens}}


def _question(body: dict) -> str:
    return next(q["question"] for q in QUESTIONS if q["question"] in json.dumps(body["messages"]))


def _turn(body: dict) -> int:
    """The index of the turn asked for: the assistant turns after the question's message."""
    first = next(i for i, m in enumerate(body["messages"]) if "What is" in str(m["content"]))
    return sum(m["role"] == "assistant" for m in body["messages"][first:])


REACT = {
    "What is 17 * 23?": [
        {
            "reasoning_content": "I should multiply.",
            "content": "Thought: multiply.\nAction: calculate[17 * 23]",
        },
        {"content": "Thought: done.\nAction: finish[391]"},
    ],
    "What is 2 + 2?": [{"content": "<think>\neasy\n</think>\n\nThought: x\nAction: finish[4]"}],
    "What is 3 + 3?": [{"content": "I do not know."}],
}


def test_a_react_agent_on_a_chat_endpoint(tmp_path):
    def answer(path: str, body: dict) -> tuple[int, dict]:
        assert path == "/v1/chat/completions", path
        return _chat_reply(REACT[_question(body)][_turn(body)])

    with openai_endpoint(answer) as (url, bodies):
        summary = run_eval(EvalConfig.model_validate(_fields(url, tmp_path)))
    eps = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "episodes.jsonl")}
    assert eps["q0"]["info"]["reward"] is True and eps["q0"]["info"]["turns"] == 2
    assert eps["q1"]["info"]["pred"] == "4"
    assert eps["q2"]["info"]["failure"] == "unparseable_action"
    assert summary["backend"] == "openai" and summary["failures"]["unparseable_action"] == 1
    assert summary["throughput"]["generated_tokens"] == 7 * 4  # the server's usage
    # the reasoning field is kept inline, as `natscale prepare` reads a reasoning field
    first = eps["q0"]["conversations"][0]["content"]
    assert (
        first
        == "<think>\nI should multiply.\n</think>\n\nThought: multiply.\nAction: calculate[17 * 23]"
    )
    assert eps["q0"]["conversations"][1]["content"] == "Observation: 391"

    # what the server was sent: the paper's prompt with the success marker, then the history
    second = next(b for b in bodies if "Observation: 391" in json.dumps(b))
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert second["messages"][0]["content"].startswith("Solve a math problem with interleaving")
    assert second["messages"][1]["content"] == "I've understood your instruction, start please."
    assert second["messages"][2]["content"] == f"Question: What is 17 * 23?. {SUCCESS}"
    assert second["messages"][3]["content"] == first
    assert second["messages"][4]["content"] == "Observation: 391"
    assert second["model"] == "served" and second["stop"] == ["\nObservation:"]
    assert second["max_tokens"] == 64 and second["temperature"] == 0.0
    assert "tools" not in second and "prompt" not in second


TOOLS = {
    "What is 17 * 23?": [
        {
            "content": "I will multiply.",
            "tool_calls": [
                {
                    "id": "chatcmpl-tool-9f2c",
                    "type": "function",
                    "function": {"name": "calculate", "arguments": '{"expression": "17 * 23"}'},
                }
            ],
        },
        {
            "content": None,
            "tool_calls": [{"function": {"name": "finish", "arguments": {"answer": "391"}}}],
        },
    ],
    "What is 2 + 2?": [{"content": "4", "reasoning": "Two and two."}],
    "What is 3 + 3?": [
        {"content": "", "tool_calls": [{"function": {"name": "calculate", "arguments": "{3+3"}}]}
    ],
}


def test_tool_calls_the_server_parsed(tmp_path):
    def answer(path: str, body: dict) -> tuple[int, dict]:
        return _chat_reply(TOOLS[_question(body)][_turn(body)])

    fields = _fields("", tmp_path, loop={"protocol": "tool_calls"})
    with openai_endpoint(answer) as (url, bodies):
        summary = run_eval(EvalConfig.model_validate({**fields, "model": url}))
    eps = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "episodes.jsonl")}
    assert eps["q0"]["info"]["pred"] == "391" and eps["q0"]["info"]["reward"] is True
    assert eps["q1"]["info"]["pred"] == "4"  # a chat agent's answer, without a call
    assert eps["q2"]["info"]["failure"] == "unparseable_action"
    assert "not JSON" in eps["q2"]["info"]["error"]
    assert summary["protocol"] == "tool_calls" and summary["response_template"] == "server"
    # the episode in the OpenAI chat form, with natscale's own call ids
    msgs = eps["q0"]["messages"]
    assert [m["role"] for m in msgs] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    (call,) = msgs[3]["tool_calls"]
    assert call["id"] == "call01000" and msgs[4]["tool_call_id"] == "call01000"
    assert msgs[4]["content"] == "391"
    assert eps["q1"]["messages"][-1]["content"] == "<think>\nTwo and two.\n</think>\n\n4"

    # what the server was sent: the tools, the call with its arguments as a JSON string, its
    # result as a tool message with the call's id; no stop string
    second = next(b for b in bodies if '"content": "391"' in json.dumps(b))
    assert [t["function"]["name"] for t in second["tools"]] == ["calculate", "finish"]
    sent_call = second["messages"][3]
    assert sent_call["content"] == "I will multiply."
    assert sent_call["tool_calls"] == [
        {
            "id": "call01000",
            "type": "function",
            "function": {"name": "calculate", "arguments": '{"expression": "17 * 23"}'},
        }
    ]
    assert second["messages"][4] == {"role": "tool", "tool_call_id": "call01000", "content": "391"}
    assert "stop" not in second


def test_calls_left_in_the_text_are_read_with_a_response_template(tmp_path):
    """A server without a tool parser returns the calls as text: `prompt.response_template`
    reads them there."""
    call = '<tool_call>\n{"name": "finish", "arguments": {"answer": "391"}}\n</tool_call>'

    def answer(path: str, body: dict) -> tuple[int, dict]:
        return _chat_reply({"content": call})

    fields = _fields(
        "", tmp_path, loop={"protocol": "tool_calls"}, limit=1,
        prompt={"response_template": "tool_call_json"},
    )  # fmt: skip
    with openai_endpoint(answer) as (url, _):
        summary = run_eval(EvalConfig.model_validate({**fields, "model": url}))
    (ep,) = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    assert ep["info"]["pred"] == "391" and summary["response_template"] == "tool_call_json"


def test_a_full_context_ends_the_episode_and_extra_body_replaces_fields(tmp_path):
    """A server's 400 for a prompt that does not fit is a context overflow, and one for a turn
    its parser cannot read (`transformers serve`) an unparseable action: the episode ends; other
    4xx stop the run. `openai.extra_body` adds fields, and a null there removes one
    (`max_tokens` for APIs that want `max_completion_tokens`)."""
    too_long = {"error": {"message": "This model's maximum context length is 2048 tokens."}}
    unreadable = {"detail": "json parser could not parse region as JSON.\nContent: '{\"na"}

    def answer(path: str, body: dict) -> tuple[int, dict]:
        if "17 * 23" in json.dumps(body["messages"]):
            return 400, too_long
        if "3 + 3" in json.dumps(body["messages"]):
            return 400, unreadable
        return _chat_reply({"content": "Thought: x\nAction: finish[4]"})

    extra = {"max_tokens": None, "max_completion_tokens": 32, "stop": None}
    fields = _fields("", tmp_path, openai={"extra_body": extra})
    with openai_endpoint(answer) as (url, bodies):
        summary = run_eval(EvalConfig.model_validate({**fields, "model": url}))
    assert summary["failures"]["context_overflow"] == 1 and summary["episodes"] == 3
    (bad,) = [e for e in read_jsonl(tmp_path / "run" / "episodes.jsonl") if e["id"] == "q2"]
    assert bad["info"]["failure"] == "unparseable_action" and bad["info"]["turns"] == 1
    assert bad["info"]["error"].startswith("the server could not read the turn: {")
    assert all(b["max_completion_tokens"] == 32 for b in bodies)
    assert not any("max_tokens" in b or "stop" in b for b in bodies)

    def refuse(path: str, body: dict) -> tuple[int, dict]:
        return 401, {"error": {"message": "invalid api key"}}

    with openai_endpoint(refuse) as (url, _):
        cfg = EvalConfig.model_validate({**fields, "model": url, "output": str(tmp_path / "b")})
        with pytest.raises(EndpointError, match=r"/v1/chat/completions: HTTP 401: .*invalid api"):
            run_eval(cfg)


def test_chat_takes_no_token_ids(tmp_path):
    with pytest.raises(ValueError, match=r"prompt_format: ids is for openai.api: completions"):
        EvalConfig.model_validate(_fields("http://x/v1", tmp_path, openai={"prompt_format": "ids"}))


@pytest.mark.parametrize("name", ["collect_chat", "eval_math", "eval_scripted"])
def test_example_configs_are_valid(name):
    from natscale.cli.eval import load_eval_config

    assert load_eval_config(str(DATA.parent / "configs" / f"{name}.yaml"), [], None).task == "math"
