"""Which response template reads a model's tool calls: the first that reads back what training
teaches. The chat templates below are stand-ins written for these tests, each writing calls the
way one family's template does (the real ones are probed by
benchmarks/data/probe_chat_templates.py)."""

from __future__ import annotations

import json

import pytest

from natscale.agent.tool_calls import BUILTIN_SCHEMAS, ToolCall
from natscale.config.eval import PromptConfig
from natscale.data.render import load_tokenizer
from natscale.eval.errors import EvalError
from natscale.eval.prompting import Prompter
from natscale.eval.tool_parsing import build_parser

from .conftest import TOKENIZER

SPECIALS = ["<|im_start|>", "<|im_end|>", "[TOOL_CALLS]", "<|tool_call|>", "<|python_tag|>"]


def chat(calls: str) -> str:
    """A ChatML-style template whose assistant turns write their calls with ``calls`` (Jinja
    for one call ``c``; ``m`` is the message)."""
    return (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' and m['tool_calls'] %}" + calls + "{% else %}"
        "{{ m['content'] }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


EACH = "{% for c in m['tool_calls'] %}"
STAND_INS = {
    "tool_call_json": chat(
        "{{ m['content'] }}" + EACH + "{{ '\\n<tool_call>\\n' + c['function'] | tojson"
        " + '\\n</tool_call>' }}{% endfor %}"
    ),
    "tool_call_xml": chat(
        EACH + "{{ '<tool_call>\\n<function=' + c['function']['name'] + '>\\n' }}"
        "{% for k, v in c['function']['arguments'].items() %}"
        "{{ '<parameter=' + k + '>\\n' + v + '\\n</parameter>\\n' }}{% endfor %}"
        "{{ '</function>\\n</tool_call>' }}{% endfor %}"
    ),
    "llama3_json": chat(
        EACH + "{{ {'name': c['function']['name'], 'parameters': c['function']['arguments']}"
        " | tojson }}{% endfor %}"
    ),
    "mistral": chat(
        "{{ '[TOOL_CALLS] [' }}" + EACH + "{{ c['function'] | tojson }}"
        "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ']' }}"
    ),
    "granite": chat(EACH + "{{ '<|tool_call|> ' + c['function'] | tojson + '\\n' }}{% endfor %}"),
    "pythonic": chat(
        "{{ '[' }}" + EACH + "{{ c['function']['name'] + '(' }}"
        "{% for k, v in c['function']['arguments'].items() %}{{ k + '=' + v | tojson }}"
        "{% endfor %}{{ ')' }}{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ']' }}"
    ),
}


def _prompter(jinja: str, **prompt) -> Prompter:
    tok = load_tokenizer(TOKENIZER)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.chat_template = jinja
    prompter = Prompter(PromptConfig(template="hf", **prompt), tok)
    prompter.tools = list(BUILTIN_SCHEMAS.values())
    return prompter


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_each_familys_calls_pick_their_template(name):
    prompter = _prompter(STAND_INS[name])
    parser = build_parser(None, prompter)
    assert parser.name == name
    # two calls in a turn, where the family writes more than one
    calls = [ToolCall("calculate", {"expression": "5 + 7"}), ToolCall("finish", {"answer": "12"})]
    written = {
        "tool_call_json": "\n".join(
            f"<tool_call>\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n</tool_call>"
            for c in calls
        ),
        "tool_call_xml": "<tool_call>\n<function=calculate>\n<parameter=expression>\n5 + 7\n"
        "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=finish>\n"
        "<parameter=answer>\n12\n</parameter>\n</function>\n</tool_call>",
        "mistral": '[TOOL_CALLS] [{"name": "calculate", "arguments": {"expression": "5 + 7"}}, '
        '{"name": "finish", "arguments": {"answer": "12"}}]',
        "granite": '<|tool_call|> {"name": "calculate", "arguments": {"expression": "5 + 7"}}\n'
        '<|tool_call|> {"name": "finish", "arguments": {"answer": "12"}}',
        "pythonic": '[calculate(expression="5 + 7"), finish(answer="12")]',
    }
    if name in written:
        assert parser.parse(written[name], "", prompter.tools).calls == calls
    assert parser.parse("The answer is 12.", "", prompter.tools).calls == []


def test_a_syntax_no_template_reads_is_refused_before_any_episode():
    odd = chat(EACH + "{{ 'CALL ' + c['function']['name'] }}{% endfor %}")
    with pytest.raises(EvalError) as err:
        build_parser(None, _prompter(odd))
    text = str(err.value)
    assert "no response template reads back a tool call" in text
    assert "tool_call_json: reads 'CALL finish' as the calls [] and the text 'CALL finish'" in text
    assert text.count("\n  ") == 6  # every bundled template tried, each with what it read
    # a given template is checked the same way
    with pytest.raises(EvalError, match=r"mistral: reads 'CALL finish'"):
        build_parser("mistral", _prompter(odd))
    assert build_parser("mistral", _prompter(STAND_INS["mistral"])).name == "mistral"


def test_prepare_warns_when_no_template_reads_the_calls_it_trains(tmp_path):
    """A chat template that writes malformed calls (vLLM's Hermes tool template writes
    ``{"name": "calculate"}, "arguments": {...}``) is trained as it is, with a warning."""
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    broken = chat(
        EACH + "{{ '<tool_call>\\n{\"name\": \"' + c['function']['name'] + '\"}, "
        "\"arguments\": ' + c['function']['arguments'] | tojson + '\\n</tool_call>' }}"
        "{% endfor %}"
    )
    call = {"type": "function", "id": "c1",
            "function": {"name": "calculate", "arguments": '{"expression": "5 + 7"}'}}  # fmt: skip
    record = {
        "messages": [
            {"role": "user", "content": "What is 5 + 7?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "12", "tool_call_id": "c1"},
            {"role": "assistant", "content": "12"},
        ]
    }
    data = tmp_path / "calls.jsonl"
    data.write_text(json.dumps(record) + "\n")
    warnings = {}
    for name, jinja in (("broken", broken), ("json", STAND_INS["tool_call_json"])):
        template = tmp_path / f"{name}.jinja"
        template.write_text(jinja.replace("<|im_end|>", "</s>"))  # the tokenizer's end of turn
        cfg = PrepareConfig.model_validate(
            {
                "sources": [{"format": "openai", "paths": [str(data)]}],
                "outcome": {"success": "all"},
                "strategy": {"name": "vanilla"},
                "render": {
                    "tokenizer": str(TOKENIZER),
                    "chat_template": str(template),
                    "observation_role": "tool",
                },
                "pack": {"max_seq_len": 512},
            }
        )
        result = prepare(cfg, tmp_path / name, progress=False)
        warnings[name] = result.stats["warnings"]
    assert "tool_calls_unreadable" not in warnings["json"]
    found = warnings["broken"]["tool_calls_unreadable"]
    assert found["count"] == 1
    assert 'tool_call_json cannot read \'<tool_call>\\n{"name": "finish"}, ' in found["message"]
