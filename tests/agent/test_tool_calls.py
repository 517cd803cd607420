"""Native tool calls: the response parser reads what training teaches; the loop's turn rules;
tool schemas (built-in, from a user function's docstring, from a file)."""

from __future__ import annotations

import json

import pytest

from natscale.agent.loop import Generation, Question, advance_tool_calls, rollout
from natscale.agent.response_templates import response_template
from natscale.agent.tool_calls import (
    BUILTIN_SCHEMAS,
    ParsedTurn,
    ResponseParser,
    ToolCall,
    ToolCallParseError,
    response_parser,
)
from natscale.agent.tools import (
    ToolConfigError,
    build_tools,
    call_tool_with,
    close_tools,
    load_schemas,
    with_schemas,
)
from natscale.data.render import Message, Renderer, add_missing_tokens, load_tokenizer

from ..data.test_chat_template_turns import CALL_AFTER_TEXT, SPECIALS
from ..eval.conftest import TOKENIZER

CALLS = [
    {"id": "call01000", "name": "calculate", "arguments": {"expression": "17 * 23"}},
    {"id": "call01001", "name": "search", "arguments": {"query": 'NAT [paper] "quotes"'}},
]


def _tokenizer(template: str):
    tok = load_tokenizer(TOKENIZER)
    if template == "hf":
        tok.add_special_tokens({"additional_special_tokens": SPECIALS})
        tok.chat_template = CALL_AFTER_TEXT
    else:
        add_missing_tokens(tok, template)
    return tok


@pytest.mark.parametrize("template", ["llama2", "chatml", "llama3", "hf"])
@pytest.mark.parametrize("text", ["I will look both up.", ""])
def test_the_parser_reads_back_the_calls_training_teaches(template, text):
    """A trained turn with calls, as the template renders it, parses to the same message."""
    tok = _tokenizer(template)
    renderer = Renderer(tok, template, observation_role="tool" if template == "hf" else "user")
    messages = [Message("user", "Compute and search."), Message("assistant", text, True, CALLS)]
    enc = renderer.encode(messages, tools=list(BUILTIN_SCHEMAS.values()))
    written = tok.decode(enc.ids[enc.mask].tolist(), skip_special_tokens=False)
    turn = response_parser(tok, None, renderer.end_of_turn).parse(written)
    assert turn.content == text
    assert turn.calls == [ToolCall(c["name"], c["arguments"]) for c in CALLS]


def test_reasoning_is_read_apart_and_kept_in_the_history_as_think_tags():
    parser = response_parser(load_tokenizer(TOKENIZER), None, "</s>")
    turn = parser.parse("Multiply.\n</think>\n\nDone.</s>")  # the prompt opened <think>
    assert turn == ParsedTurn("Done.", "Multiply.", [])
    assert turn.history_content() == "<think>\nMultiply.\n</think>\n\nDone."
    with pytest.raises(ToolCallParseError, match="not parse region as JSON"):
        parser.parse('<tool_call>\n{"name": "calculate", "arguments": {"expression": "1"\n')
    with pytest.raises(ToolCallParseError, match="are list, not a JSON object"):
        parser.parse('<tool_call>\n{"name": "calculate", "arguments": [1]}\n</tool_call>')


def test_the_tokenizers_own_response_template_is_used():
    """A model that ships a response template (Mistral's ``[TOOL_CALLS]`` JSON list here) is
    parsed with it, on the prompt before the turn."""
    tok = load_tokenizer(TOKENIZER)
    tok.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": "[/INST]",
        "fields": {
            "tool_calls": {
                "open": "[TOOL_CALLS]",
                "content": "json",
                "transform_each": True,
                "transform": {
                    "type": "function",
                    "function": {"name": "{name}", "arguments": "{arguments}"},
                },
            },
            "content": {"content": "text"},
        },
    }
    parser = response_parser(tok, None, "</s>")
    assert parser.prefixed
    turn = parser.parse(
        '[TOOL_CALLS][{"name": "finish", "arguments": {"answer": "2"}}]', "<s>[INST] 1+1 [/INST]"
    )
    assert turn.calls == [ToolCall("finish", {"answer": "2"})]


def _run(turns: list[Generation], tools, max_turns: int = 4):
    parser = response_parser(load_tokenizer(TOKENIZER), None, "</s>")

    def generate(episodes):
        return [turns[ep.turns] for ep in episodes]

    def step(ep, gen, tools, **kw):
        advance_tool_calls(ep, gen, tools, parse=lambda e, g: parser.parse(g.text), **kw)

    (ep,) = rollout(
        [(Question("q", "?"), 0)], generate, tools, batch_size=1, max_turns=max_turns, step=step
    )
    return ep


def _call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


CALL_17_23 = {
    "tool_call_json": _call("calculate", expression="17 * 23"),
    "tool_call_xml": "<tool_call>\n<function=calculate>\n<parameter=expression>\n17 * 23\n"
    "</parameter>\n</function>\n</tool_call>",
    "pythonic": '[calculate(expression="17 * 23")]',
}  # the syntaxes whose calls text may follow (llama3_json, mistral, granite read to the end)


@pytest.mark.parametrize("name", list(CALL_17_23))
def test_the_text_before_and_after_the_calls_is_all_content(name):
    """Text on both sides of the calls is kept, each region stripped, joined by a line break."""
    parser = ResponseParser(response_template(name, "<|im_end|>"), prefixed=False, name=name)
    call = CALL_17_23[name]
    turn = parser.parse(f"I will multiply first.\n{call}\n  Then I will add 5. <|im_end|>")
    assert turn == ParsedTurn(
        "I will multiply first.\nThen I will add 5.",
        None,
        [ToolCall("calculate", {"expression": "17 * 23"})],
    )
    assert parser.parse(f"{call}\n{call}<|im_end|>").content == ""
    assert parser.parse("Just 391.<|im_end|>").content == "Just 391."


def test_the_turn_rules_of_the_tool_call_loop():
    tools = build_tools(["calculate"])
    tools = with_schemas(tools)
    two = Generation(
        _call("calculate", expression="2 * 3") + _call("calculate", expression="1/0"), 9
    )
    ep = _run(
        [two, Generation(_call("finish", answer="6") + _call("calculate", expression="1"), 3)],
        tools,
    )
    assert ep.pred == "6" and ep.failure is None and ep.turns == 2 and ep.generated_tokens == 12
    results = [m["content"] for m in ep.history if m["role"] == "tool"]
    assert results[0] == "6" and results[1] == "Error: division by zero"
    assert len(results) == 2  # nothing runs after finish, and finish has no result message
    ids = [c["id"] for c in ep.history[0]["tool_calls"]]
    assert [m["tool_call_id"] for m in ep.history[1:3]] == ids == ["call01000", "call01001"]

    loops = [Generation(_call("calculate", expression="1"), 1)] * 3
    assert _run(loops, tools, max_turns=3).failure == "turn_limit"
    cut = _run([Generation("The answer might be", 4, truncated=True)], tools)
    assert cut.failure == "unparseable_action" and "cut at loop.max_new_tokens" in cut.error
    assert cut.pred is None and cut.truncated_turns == 1
    empty = _run([Generation("", 1)], tools)
    assert empty.failure == "unparseable_action" and "neither a tool call" in empty.error
    number = _run([Generation(_call("finish", answer=42), 1)], tools)
    assert number.pred == "42"
    overflow = _run([Generation("", 0, overflow=True)], tools)
    assert overflow.failure == "context_overflow" and overflow.turns == 0


@pytest.mark.parametrize("arguments", [{"result": "18"}, {}, {"answer": "18", "why": "9 * 2"}])
def test_a_finish_call_without_its_answer_is_an_error_result(arguments):
    """A ``finish`` whose arguments do not fit is an ``Error:`` result, not the answer "null";
    the episode goes on, and a later ``finish`` with its answer ends it."""
    tools = with_schemas(build_tools(["calculate"]))
    bad = Generation(_call("finish", **arguments), 1)
    ep = _run([bad, Generation(_call("finish", answer="18"), 1)], tools)
    assert ep.pred == "18" and ep.failure is None and ep.turns == 2
    gave = sorted(arguments) or "none"
    assert ep.history[1] == {
        "role": "tool",
        "tool_call_id": "call01000",
        "name": "finish",
        "content": f"Error: finish takes one argument, 'answer'; the call gave {gave}",
        "loss": False,
    }
    assert _run([bad], tools, max_turns=1).failure == "turn_limit"


USER_TOOLS = '''
def weather(city: str, days: int = 1) -> str:
    """The forecast of a city.

    Args:
        city: the city's name
        days: how many days ahead
    """
    return f"{city}: sunny for {days} day(s)"


def bare(x):
    return x
'''


def test_user_tools_schema_from_their_docstring_and_keyword_calls(tmp_path, monkeypatch):
    (tmp_path / "weathertools.py").write_text(USER_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = build_tools(["calculate"], user_tools={"weather": "weathertools:weather"})
    try:
        tools = with_schemas(tools)
        assert list(tools) == ["calculate", "weather", "finish"]
        fn = tools["weather"].schema["function"]
        assert fn["description"] == "The forecast of a city."
        assert fn["parameters"]["required"] == ["city"]
        assert fn["parameters"]["properties"]["days"]["type"] == "integer"
        result = call_tool_with(tools["weather"], {"city": "Oslo", "days": 2}, 10)
        assert result == "Oslo: sunny for 2 day(s)"
        wrong = call_tool_with(tools["weather"], {"town": "Oslo"}, 10)
        assert wrong.startswith("Error: TypeError") and "town" in wrong
        assert call_tool_with(tools["calculate"], {"expression": 7}, 10) == "7"
        assert call_tool_with(tools["calculate"], {}, 10).startswith(
            "Error: calculate takes one argument, 'expression'"
        )
    finally:
        close_tools(tools)
    bare = build_tools([], user_tools={"bare": "weathertools:bare"})
    try:
        with pytest.raises(ToolConfigError, match=r"no tool schema .*Google-style docstring"):
            with_schemas(bare)
        # a schema in tools.schemas stands in for the docstring
        given = {"bare": {"type": "function", "function": {"name": "bare", "parameters": {}}}}
        assert with_schemas(bare, given)["bare"].schema == given["bare"]
    finally:
        close_tools(bare)


def test_a_user_tool_is_offered_under_its_configured_name(tmp_path, monkeypatch):
    """``tools.user: {forecast: "mod:weather"}`` is offered as ``forecast``, the name the
    registry calls, not as its function's name ``weather``."""
    (tmp_path / "weathertools.py").write_text(USER_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = build_tools([], user_tools={"forecast": "weathertools:weather"})
    try:
        tools = with_schemas(tools)
        fn = tools["forecast"].schema["function"]
        assert fn["name"] == "forecast" and fn["description"] == "The forecast of a city."
        ep = _run(
            [
                Generation(_call("forecast", city="Oslo"), 1),
                Generation(_call("finish", answer="sunny"), 1),
            ],
            tools,
        )
        assert ep.failure is None and ep.pred == "sunny"
        assert ep.history[1]["content"] == "Oslo: sunny for 1 day(s)"
        misnamed = {"forecast": {"type": "function", "function": {"name": "weather"}}}
        with pytest.raises(ToolConfigError, match="schema for tool 'forecast' is named 'weather'"):
            with_schemas(tools, misnamed)
    finally:
        close_tools(tools)


def test_tool_schema_files(tmp_path):
    path = tmp_path / "tools.json"
    schema = {"name": "calculate", "description": "Arithmetic.", "parameters": {
        "type": "object", "properties": {"expr": {"type": "string"}}}}  # fmt: skip
    path.write_text(json.dumps([schema]))
    tools = with_schemas(build_tools(["calculate"]), load_schemas(path))
    assert tools["calculate"].schema["function"] == schema
    assert call_tool_with(tools["calculate"], {"expr": "2 ** 5"}) == "32"
    schema["parameters"]["properties"]["more"] = {"type": "string"}
    path.write_text(json.dumps([schema]))
    with pytest.raises(ToolConfigError, match="exactly one parameter"):
        with_schemas(build_tools(["calculate"]), load_schemas(path))
    finish = {"name": "finish", "description": "The final answer.", "parameters": {
        "type": "object", "properties": {"result": {"type": "string"}}}}  # fmt: skip
    renamed = with_schemas(build_tools(["calculate"]), load_schemas([finish]))
    ep = _run(
        [Generation(_call("finish", result="4"), 1)], renamed
    )  # the answer under its own name
    assert ep.pred == "4" and ep.done and ep.failure is None
    path.write_text("[{")
    with pytest.raises(ToolConfigError, match=r"tools\.schemas: .*tools\.json: not a JSON file"):
        load_schemas(path)
    with pytest.raises(ToolConfigError, match="file not found"):
        load_schemas(tmp_path / "missing.json")
