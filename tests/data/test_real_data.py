"""Real public agent data (issue 15): small records of the published shapes, end to end."""

from __future__ import annotations

import datasets
import pytest

from natscale.config.prepare import PrepareConfig
from natscale.data.errors import DataError
from natscale.data.prepare import prepare

from .nat_test_data import write_json, write_jsonl

# AgentInstruct as published (THUDM/AgentInstruct): loss flags, no success field
AGENTINSTRUCT = {
    "id": "os_0",
    "conversations": [
        {"from": "human", "value": "You are an assistant that operates a shell.", "loss": False},
        {"from": "gpt", "value": "OK.", "loss": False},
        {"from": "human", "value": "How many files are in /etc?", "loss": False},
        {
            "from": "gpt",
            "value": "Think: count them.\n\nAct: bash\n\n```bash\nls /etc | wc -l\n```",
            "loss": True,
        },
        {"from": "human", "value": "The output of the OS:\n212", "loss": False},
        {"from": "gpt", "value": "Think: done.\n\nAct: answer(212)", "loss": True},
    ],
}


def _prepare_config(tokenizer_dir, tmp_path, sources, **sections) -> PrepareConfig:
    data = {
        "output": sections.pop("output", str(tmp_path / "out")),
        "sources": sources,
        "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        "pack": {"max_seq_len": 512},
        **sections,
    }
    return PrepareConfig.model_validate(data)


# ---------------------------------------------------------------- item 1: SFT data


def test_sft_data_without_outcomes_names_the_outcome_mode(tokenizer_dir, tmp_path):
    path = write_jsonl(tmp_path / "ai.jsonl", [AGENTINSTRUCT])
    src = [{"format": "agentinstruct", "paths": [str(path)]}]
    cfg = _prepare_config(tokenizer_dir, tmp_path, src, strategy={"name": "vanilla"})
    with pytest.raises(DataError, match="has no success value") as exc:
        prepare(cfg, progress=False)
    assert "outcome.success: all" in str(exc.value) and "success: true" in str(exc.value)
    # skipping every record: the empty-dataset error says the same
    cfg = cfg.model_copy(update={"on_error": "skip"})
    with pytest.raises(DataError, match="no example left") as exc:
        prepare(cfg, progress=False)
    assert "outcome.success: all" in str(exc.value)


@pytest.mark.parametrize("how", ["outcome", "source"])
def test_sft_data_prepares_with_an_outcome_mode(tokenizer_dir, tmp_path, how):
    path = write_jsonl(tmp_path / "ai.jsonl", [AGENTINSTRUCT, {**AGENTINSTRUCT, "id": "os_1"}])
    src = {"format": "agentinstruct", "paths": [str(path)]}
    sections = {"strategy": {"name": "vanilla"}}
    if how == "outcome":
        sections["outcome"] = {"success": "all"}
    else:
        src["success"] = True
    result = prepare(_prepare_config(tokenizer_dir, tmp_path, [src], **sections), progress=False)
    assert result.stats["per_class"]["success"]["examples"] == 2


def test_a_source_of_failures(tokenizer_dir, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [AGENTINSTRUCT])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**AGENTINSTRUCT, "id": "os_9"}])
    sources = [
        {"format": "agentinstruct", "paths": [str(good)], "success": True},
        {"format": "agentinstruct", "paths": [str(bad)], "success": False},
    ]
    result = prepare(_prepare_config(tokenizer_dir, tmp_path, sources), progress=False)
    assert {k: v["examples"] for k, v in result.stats["per_class"].items()} == {
        "success": 1,
        "failure": 1,
    }


@pytest.mark.parametrize("rule", ["all", "exact", "em", "f1"])
def test_a_source_success_wins_under_every_outcome_rule(tokenizer_dir, tmp_path, rule):
    # the gold answer is one no trajectory gives (no finish[...]): computed rules say failure
    good = write_jsonl(tmp_path / "good.jsonl", [{**AGENTINSTRUCT, "answer": "#### 7"}])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**AGENTINSTRUCT, "id": "os_9", "answer": "212"}])
    sources = [
        {"format": "agentinstruct", "paths": [str(good)], "success": True},
        {"format": "agentinstruct", "paths": [str(bad)], "success": False},
    ]
    cfg = _prepare_config(tokenizer_dir, tmp_path, sources, outcome={"success": rule})
    result = prepare(cfg, progress=False)
    assert {k: v["examples"] for k, v in result.stats["per_class"].items()} == {
        "success": 1,
        "failure": 1,
    }


# ---------------------------------------------------------------- item 2: baseline prompt

_INSTR = "Solve a question answering task with interleaving Thought, Action, Observation steps."
_TARGET_NOTE = " Note that the steps could be correct or incorrect."
_ACK = "I've understood your instruction, start please."
# the paper's prompts/StrategyQA/StrategyQA_conversation.json layout (abridged wording)
PAPER_PROMPT = {
    "zero-shot": {
        "conversations": [
            {"role": "user", "content": _INSTR},
            {"role": "assistant", "content": _ACK},
        ],
        "question_prompt": "Question: {question}",
    },
    "zero-shot-target-aware": {
        "conversations": [
            {"role": "user", "content": _INSTR + _TARGET_NOTE},
            {"role": "assistant", "content": _ACK},
        ],
        "correct_question_prompt": "Question: {question}. Solve the question **correctly**.",
        "incorrect_question_prompt": "Question: {question}. But **incorrectly** solve the question.",
    },
}
NAT_STRATEGYQA = {
    "id": "sq1",
    "source": 0.2,
    "info": {"reward": True, "pred": "Yes", "gt": True},
    "conversations": [
        {"role": "assistant", "content": "Thought: yes.\n\nAction: finish[Yes]", "loss": True},
        {"role": "user", "content": "Observation: Episode finished", "loss": False},
    ],
}


def _nat_source(tmp_path, **over) -> dict:
    traj = write_json(tmp_path / "sq.json", [NAT_STRATEGYQA])
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "sq1", "question": "Is it so?"}])
    prompt = write_json(tmp_path / "prompt.json", PAPER_PROMPT)
    src = {"format": "nat", "paths": [str(traj)], "questions": [str(questions)]}
    return {**src, "prompt": str(prompt), "task": "strategyqa", **over}


@pytest.mark.parametrize(
    ("strategy", "variant", "instruction"),
    [
        ("vanilla", None, _INSTR),
        ("nut", None, _INSTR),
        ("nat", None, _INSTR + _TARGET_NOTE),
        ("vanilla", "zero-shot-target-aware", _INSTR + _TARGET_NOTE),  # named: kept
    ],
)
def test_baselines_default_to_the_papers_baseline_prompt(
    tokenizer_dir, tmp_path, strategy, variant, instruction
):
    from natscale.data.errors import Issues
    from natscale.data.prepare import load_sources

    src = _nat_source(tmp_path, **({"prompt_variant": variant} if variant else {}))
    cfg = _prepare_config(tokenizer_dir, tmp_path, [src], strategy={"name": strategy})
    trajs, prompts = load_sources(cfg, Issues())
    assert prompts["strategyqa"].instruction == instruction
    assert trajs[0].instruction == instruction


def test_eval_prompt_follows_the_same_default(tmp_path):
    from natscale.data.prompts import load_task_prompt

    path = write_json(tmp_path / "p.json", PAPER_PROMPT)
    assert load_task_prompt(path, strategy="nut").instruction == _INSTR
    assert load_task_prompt(path, strategy="nat").instruction == _INSTR + _TARGET_NOTE
    assert load_task_prompt(path).instruction == _INSTR + _TARGET_NOTE
    from natscale.config.eval import PromptConfig
    from natscale.eval.prompting import Prompter

    cfg = PromptConfig(file=str(path), strategy={"name": "vanilla"})
    assert Prompter(cfg, None).task_prompt.instruction == _INSTR


# ---------------------------------------------------------------- item 3: few-shot variants


@pytest.mark.parametrize("variant", ["one-shot", "two-shot"])
def test_few_shot_variants_are_refused(tmp_path, variant):
    from natscale.data.prompts import load_task_prompt

    demo = "Question: Is water wet?\nThought: yes.\nAction: finish[Yes]"
    paper = {
        **PAPER_PROMPT,
        variant: {
            "conversations": [
                {"role": "user", "content": _INSTR + "\nHere is an example:"},
                {"role": "assistant", "content": demo},
            ],
            "question_prompt": "Question: {question}",
        },
    }
    path = write_json(tmp_path / "p.json", paper)
    with pytest.raises(DataError, match=f"{variant}' is a few-shot prompt") as exc:
        load_task_prompt(path, variant)
    assert "prompt_variant to 'zero-shot'" in str(exc.value)
    # whatever the name: a conversation longer than instruction + acknowledgement
    paper["custom"] = {"conversations": [*paper[variant]["conversations"]] * 2}
    path = write_json(tmp_path / "p2.json", paper)
    with pytest.raises(DataError, match="few-shot prompt"):
        load_task_prompt(path, "custom")
    assert load_task_prompt(path, "zero-shot").instruction == _INSTR


# ---------------------------------------------------------------- item 9: error wording


def test_unfinished_error_names_the_field_the_record_has(tokenizer_dir, tmp_path):
    no_pred = {**NAT_STRATEGYQA, "info": {"reward": False, "gt": True}}  # the release's shape
    src = _nat_source(tmp_path)
    write_json(tmp_path / "sq.json", [no_pred])
    cfg = _prepare_config(tokenizer_dir, tmp_path, [src], outcome={"unfinished": "error"})
    with pytest.raises(DataError, match=r"field 'info.pred': trajectory is unfinished \(no info"):
        prepare(cfg, progress=False)
    write_json(tmp_path / "sq.json", [{**no_pred, "info": {"reward": False, "finished": False}}])
    with pytest.raises(DataError, match=r"field 'info.finished': .*info.finished is false"):
        prepare(cfg, progress=False)


def test_empty_conversation_skipped_does_not_suggest_skipping(tmp_path):
    from natscale.data.errors import Issues
    from natscale.data.formats import load_trajectories

    rec = {"conversations": [{"from": "human", "value": "q"}]}
    path = write_jsonl(tmp_path / "e.jsonl", [rec])
    issues = Issues()
    assert load_trajectories(path, "sharegpt", issues=issues, empty="skip") == []
    (msg,) = issues.examples["empty_conversation"]
    assert "outcome.empty: skip" not in msg and "counted and skipped" in msg
    with pytest.raises(DataError, match=r"set outcome\.empty: skip"):
        load_trajectories(path, "sharegpt", empty="error")


@pytest.mark.parametrize(
    ("fmt", "record", "fits"),
    [
        ("sharegpt", {"messages": [{"role": "user", "content": "q"}]}, "format openai"),
        ("openai", {"conversations": [{"from": "human", "value": "q"}]}, "format sharegpt"),
        ("nat", [{"from": "human", "value": "q"}], "bare list of turns"),
        ("alpaca", {"messages": []}, "format openai"),
        ("sharegpt", {"prompt": [], "chosen": [], "rejected": []}, "preference pair"),
    ],
)
def test_layout_errors_say_which_format_fits(tmp_path, fmt, record, fits):
    from natscale.data.formats import load_trajectories

    path = write_jsonl(tmp_path / "r.jsonl", [record])
    with pytest.raises(DataError, match=fits):
        load_trajectories(path, fmt)


# Agent-FLAN (internlm/Agent-FLAN): role/content turns with loss flags under "conversation"
AGENT_FLAN = {
    "id": "af_0",
    "conversation": [
        {"role": "user", "content": "How many files in /etc?", "loss": False},
        {"role": "assistant", "content": "Thought: count.\nFinal Answer: 212", "loss": True},
    ],
}


_FLAN_FITS = "format openai with messages_key: conversation"


@pytest.mark.parametrize(
    ("fmt", "options", "hint"),
    [
        ("openai", {}, f"the record has 'conversation': {_FLAN_FITS} reads it"),
        ("nat", {}, f"the record has 'conversation': {_FLAN_FITS} reads it"),
        (
            "sharegpt",
            {"conversations_key": "conversation"},
            f"the turns are role/content: {_FLAN_FITS} reads them",
        ),
    ],
)
def test_agent_flan_layout_error_suggests_openai(tmp_path, fmt, options, hint):
    """role/content turns under 'conversation' are read by openai with messages_key, not by
    sharegpt (from/value turns), and the layout hint says so."""
    from natscale.data.formats import load_trajectories

    path = write_jsonl(tmp_path / "flan.jsonl", [AGENT_FLAN])
    with pytest.raises(DataError) as exc:
        load_trajectories(path, fmt, **options)
    assert exc.value.hint == hint
    (traj,) = load_trajectories(path, "openai", messages_key="conversation")
    assert traj.question == "How many files in /etc?" and traj.turns[0].train is True


def test_set_reaches_list_items(tmp_path):
    from natscale.config.loader import ConfigError, apply_overrides

    data = {"sources": [{"format": "nat", "paths": ["a.json"]}, {"paths": ["b"]}]}
    apply_overrides(data, ["sources.0.paths=[x.json, y.json]", "sources.1.success=true"])
    assert data["sources"][0]["paths"] == ["x.json", "y.json"]
    assert data["sources"][1]["success"] is True
    for bad in ("sources.2.paths=[z]", "sources.first.paths=[z]"):
        with pytest.raises(ConfigError, match="not an index of that list"):
            apply_overrides(data, [bad])


# ---------------------------------------------------------------- item 6: dialects


def test_openai_content_parts_load(tmp_path):
    from natscale.data.formats import load_trajectories

    parts = [{"type": "text", "text": "Is it "}, {"type": "input_text", "text": "so?"}]
    rec = {
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
        ]
    }
    (t,) = load_trajectories(write_jsonl(tmp_path / "o.jsonl", [rec]), "openai")
    assert t.question == "Is it so?" and t.turns[0].content == "Yes."
    rec["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": "x"}})
    with pytest.raises(DataError, match="type 'image_url': only text parts"):
        load_trajectories(write_jsonl(tmp_path / "i.jsonl", [rec]), "openai")


# ETO's SFT files: each record is the bare list of turns (instruction, "OK", task, ...)
ETO_TURNS = [
    {"from": "human", "value": "Interact with a household to solve a task."},
    {"from": "gpt", "value": "OK"},
    {"from": "human", "value": "Your task is to: put a clean mug on the desk."},
    {"from": "gpt", "value": "Thought: find a mug.\nAction: go to countertop 1"},
    {"from": "human", "value": "Observation: On the countertop 1, you see a mug 1."},
    {"from": "gpt", "value": "Thought: take it.\nAction: take mug 1 from countertop 1"},
]


@pytest.mark.parametrize("fmt", ["sharegpt", "openai"])
def test_bare_lists_of_turns_load(tmp_path, fmt):
    from natscale.data.formats import load_trajectories

    rec = ETO_TURNS
    if fmt == "openai":
        role = {"human": "user", "gpt": "assistant"}
        rec = [{"role": role[t["from"]], "content": t["value"]} for t in ETO_TURNS]
    path = write_json(tmp_path / "eto.json", [rec, rec])
    trajs = load_trajectories(path, fmt, question_turn=1)
    assert len(trajs) == 2 and trajs[1].id == "eto.json:1"
    t = trajs[0]
    assert t.instruction.startswith("Interact") and t.acknowledgement == "OK"
    assert t.question.startswith("Your task") and [x.train for x in t.turns] == [True, False, True]


# ---------------------------------------------------------------- item 5: FireAct


# FireAct's multitask alpaca files: the answer options open `output`, before the first Thought
FIREACT_MC = {
    "instruction": "Question: Which is a mammal?",
    "input": "",
    "output": "Answer Choices: (A) shark (B) whale\n"
    "Thought: A whale is a mammal.\nAction: finish[B]\n"
    "Observation: Episode finished, reward = True\n",
}


def test_fireact_options_belong_to_the_question(tmp_path):
    from natscale.data.formats import load_trajectories

    (t,) = load_trajectories(write_jsonl(tmp_path / "f.jsonl", [FIREACT_MC]), "fireact")
    assert t.question == "Question: Which is a mammal?\nAnswer Choices: (A) shark (B) whale"
    assert [x.role for x in t.turns] == ["assistant", "observation"]
    assert t.turns[0].content.startswith("Thought: A whale")
    assert t.outcome.success is True


def test_no_double_question_prefix(tokenizer, tokenizer_dir, tmp_path):
    from natscale.data.nat import format_question

    assert format_question("Question: Is it?", "Question: {question}") == "Question: Is it?"
    assert format_question("Question: Is it?", "[A] {question}") == "[A] Question: Is it?"
    assert format_question("Is it?", "Question: {question}. ok") == "Question: Is it?. ok"
    gpt = {
        "messages": [
            {"role": "user", "content": "Question: Is it?"},
            {"role": "assistant", "content": "Thought: yes.\nAction: finish[Yes]"},
        ],
        "reward": True,
    }
    for fmt, rec in (("fireact", FIREACT_MC), ("openai", gpt)):
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", [rec])
        src = [{"format": fmt, "paths": [str(path)]}]
        cfg = _prepare_config(tokenizer_dir, tmp_path / fmt, src, strategy={"name": "vanilla"})
        result = prepare(cfg, progress=False)
        row = datasets.load_from_disk(str(result.out_dir))[0]
        text = tokenizer.decode(row["input_ids"])
        assert text.count("Question:") == 1, text


# ---------------------------------------------------------------- item 4: tool schemas

_TOOL = {
    "name": "generate_password",
    "description": "Generate a random password",
    "parameters": {"type": "object", "properties": {"length": {"type": "integer"}}},
}
# LLaMA-Factory's glaive_toolcall_en_demo layout: tools as JSON text, a top-level system
GLAIVE = {
    "conversations": [
        {"from": "human", "value": "I need a new password of 12 characters."},
        {
            "from": "function_call",
            "value": '{"name": "generate_password", "arguments": {"length": 12}}',
        },
        {"from": "observation", "value": '{"password": "a1b2c3d4e5f6"}'},
        {"from": "gpt", "value": "Here is your new password: a1b2c3d4e5f6."},
    ],
    "system": "You are a helpful assistant.",
    "tools": '[{"name": "generate_password", "description": "Generate a random password", '
    '"parameters": {"type": "object", "properties": {"length": {"type": "integer"}}}}]',
}
OPENAI_TOOLS = {
    "messages": [
        {"role": "user", "content": "I need a new password of 12 characters."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "generate_password", "arguments": '{"length": 12}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"password": "a1b2c3d4e5f6"}'},
        {"role": "assistant", "content": "Here is your new password: a1b2c3d4e5f6."},
    ],
    "tools": [{"type": "function", "function": _TOOL}],
}


@pytest.mark.parametrize(("fmt", "record"), [("sharegpt", GLAIVE), ("openai", OPENAI_TOOLS)])
def test_tool_schemas_and_calls_load(tmp_path, fmt, record):
    from natscale.data.formats import load_trajectories

    (t,) = load_trajectories(write_jsonl(tmp_path / "t.jsonl", [record]), fmt)
    assert t.tools == [{"type": "function", "function": _TOOL}]
    # the call is a trained assistant turn, the tool's output an untrained observation
    assert [(x.role, x.train) for x in t.turns] == [
        ("assistant", True),
        ("observation", False),
        ("assistant", True),
    ]
    assert t.turns[0].tool_calls[0]["name"] == "generate_password"
    assert t.turns[0].tool_calls[0]["arguments"] == {"length": 12}
    if fmt == "sharegpt":
        assert t.system == "You are a helpful assistant."


def _trained_and_untrained(tokenizer, enc) -> tuple[str, str]:
    ids = enc.ids.tolist()
    trained = tokenizer.decode([i for i, m in zip(ids, enc.mask, strict=True) if m])
    untrained = tokenizer.decode([i for i, m in zip(ids, enc.mask, strict=True) if not m])
    return trained, untrained


def test_tool_schemas_rendered_in_the_system_prompt_by_builtin_templates(tokenizer, tmp_path):
    from natscale.data.formats import load_trajectories
    from natscale.data.render import Renderer, trajectory_messages

    (t,) = load_trajectories(write_jsonl(tmp_path / "t.jsonl", [GLAIVE]), "sharegpt")
    r = Renderer(tokenizer, "llama2")
    enc = r.encode(trajectory_messages(t, t.question), tools=t.tools)
    trained, untrained = _trained_and_untrained(tokenizer, enc)
    assert "<tools>" in untrained and '"description": "Generate a random password"' in untrained
    assert "You are a helpful assistant." in untrained
    assert '"name": "generate_password"' in trained and "Here is your new password" in trained
    assert "a1b2c3d4e5f6" not in trained.split("password:")[0]  # the observation is not trained


TOOL_TEMPLATE = (
    "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }}</call>{% endfor %}"
    "{% if m.role == 'assistant' %}</s>{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("supports", [True, False])
def test_tool_schemas_reach_the_chat_template(tokenizer_dir, tmp_path, supports):
    from natscale.data.formats import load_trajectories
    from natscale.data.render import Renderer, load_tokenizer, trajectory_messages

    tok = load_tokenizer(tokenizer_dir)
    tok.chat_template = TOOL_TEMPLATE if supports else TOOL_TEMPLATE.split("{% endif %}", 1)[1]
    (t,) = load_trajectories(write_jsonl(tmp_path / "t.jsonl", [OPENAI_TOOLS]), "openai")
    r = Renderer(tok, "hf", observation_role="tool")
    enc = r.encode(trajectory_messages(t, t.question), tools=t.tools)
    trained, untrained = _trained_and_untrained(tok, enc)
    assert "generate_password" in trained  # the call
    if supports:  # apply_chat_template(..., tools=...)
        assert "<tools>" in untrained and "# Tools" not in untrained
    else:  # a template that ignores tools: the documented system-prompt rendering
        assert "# Tools" in untrained and "<tools>" in untrained
    assert "Generate a random password" in untrained


def test_glaive_prepares(tokenizer_dir, tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GLAIVE])
    src = [{"format": "sharegpt", "paths": [str(path)]}]
    cfg = _prepare_config(
        tokenizer_dir, tmp_path, src, outcome={"success": "all"}, strategy={"name": "vanilla"}
    )
    result = prepare(cfg, progress=False)
    without = _prepare_config(
        tokenizer_dir,
        tmp_path,
        [{**src[0], "tools_field": None}],
        output=str(tmp_path / "out2"),
        outcome={"success": "all"},
        strategy={"name": "vanilla"},
    )
    plain = prepare(without, progress=False)
    # the schema adds untrained tokens only
    assert result.stats["total"]["tokens"] > plain.stats["total"]["tokens"] + 30
    assert result.stats["total"]["trained_tokens"] == plain.stats["total"]["trained_tokens"]


# ---------------------------------------------------------------- item 8: warnings


def _yes_no_nat(tmp_path, n=4) -> dict:
    recs = []
    for k in range(n):
        ok = k % 2 == 0
        recs.append(
            {
                **NAT_STRATEGYQA,
                "id": f"sq{k}",
                "info": {"reward": ok, "f1": 1.0 if ok else 0.0, "pred": "Yes", "gt": ok},
            }
        )
    src = _nat_source(tmp_path)
    write_json(tmp_path / "sq.json", recs)
    write_jsonl(tmp_path / "q.jsonl", [{"id": f"sq{k}", "question": "Is it?"} for k in range(n)])
    return src


def test_nat_fine_collapsed_buckets_warn_once(tokenizer_dir, tmp_path):
    src = _yes_no_nat(tmp_path)
    said: list[str] = []
    cfg = _prepare_config(tokenizer_dir, tmp_path, [src], strategy={"name": "nat-fine"})
    result = prepare(cfg, progress=False, on_stage=said.append)
    w = result.stats["warnings"]["nat_fine_buckets_collapsed"]
    assert w["count"] == 2 and "fill 2 of 4 buckets" in w["message"]
    assert sum("fill 2 of 4" in m for m in said) == 1  # printed once
    # the paper's StrategyQA prompt has its own templates: no math fallback warning
    assert "nat_math_markers" not in result.stats["warnings"]


def test_nat_falling_back_to_math_markers_warns(tokenizer_dir, tmp_path):
    path = write_jsonl(tmp_path / "ai.jsonl", [AGENTINSTRUCT, {**AGENTINSTRUCT, "id": "os_1"}])
    sources = [{"format": "agentinstruct", "paths": [str(path)], "task": "os", "success": True}]
    result = prepare(_prepare_config(tokenizer_dir, tmp_path, sources), progress=False)
    w = result.stats["warnings"]["nat_math_markers"]
    assert w["count"] == 2 and "['os']" in w["message"]
    # with markers given, no warning
    cfg = _prepare_config(
        tokenizer_dir,
        tmp_path,
        sources,
        output=str(tmp_path / "o2"),
        strategy={"name": "nat", "markers": ["[Good]", "[Bad]"]},
    )
    assert prepare(cfg, progress=False).stats["warnings"] == {}


def test_turn_shape_warnings(tokenizer_dir, tmp_path):
    conv = [dict(t) for t in AGENTINSTRUCT["conversations"]]
    back = {**AGENTINSTRUCT, "id": "b", "conversations": [*conv, {"from": "gpt", "value": "x"}]}
    obs = [*conv[:4], {"from": "gpt", "value": "Observation: 212"}, conv[5]]
    obs_rec = {**AGENTINSTRUCT, "id": "o", "conversations": obs}
    path = write_jsonl(tmp_path / "ai.jsonl", [AGENTINSTRUCT, back, obs_rec])
    sources = [{"format": "agentinstruct", "paths": [str(path)]}]
    cfg = _prepare_config(
        tokenizer_dir, tmp_path, sources, outcome={"success": "all"}, strategy={"name": "vanilla"}
    )
    w = prepare(cfg, progress=False).stats["warnings"]
    assert w["back_to_back_assistant"]["count"] == 2  # `back`, and `obs` (gpt, gpt)
    assert w["assistant_starts_with_observation"]["count"] == 1


# ---------------------------------------------------------------- item 7: paper_compat


def _paper_reference(tok, turns: list[tuple[str, str, bool]]) -> tuple[list[int], list[bool]]:
    """The paper's preprocessing written out on strings (FastChat llama-2, one tokenizer call
    per same-flag segment, a trained </s> appended), independent of natscale's renderer."""
    segs, ret = [], "[INST] "
    for i, (role, text, loss) in enumerate(turns):
        tag = "[INST]" if role == "user" else "[/INST]"
        sep = " " if i % 2 == 0 else " </s><s>"
        if i == 0:
            segs.append((ret + text, False))
            ret = " "
        elif loss:
            segs.append((ret + tag, False))
            segs.append((" " + text + " </s>", True) if sep != " " else (" " + text, True))
            ret = "<s>" if sep != " " else sep
        else:
            segs.append((ret + tag + " " + text, False))
            ret = sep
    merged: list[list] = []
    for text, loss in segs:
        if merged and merged[-1][1] == loss:
            merged[-1][0] += text
        else:
            merged.append([text, loss])
    ids, mask = [], []
    for k, (text, loss) in enumerate(merged):
        part = tok((tok.bos_token if k == 0 else "") + text, add_special_tokens=False)["input_ids"]
        ids += part
        mask += [loss] * len(part)
    if ids[-1] != tok.eos_token_id:
        ids.append(tok.eos_token_id)
        mask.append(True)
    return ids, mask


def _legacy_llama2_tokenizer(tokenizer_dir, tmp_path):
    """The example tokenizer with Llama-2's own normaliser (prepend ``▁`` to every string)."""
    import json
    import shutil

    from natscale.data.render import load_tokenizer

    dst = tmp_path / "tok-legacy"
    shutil.copytree(tokenizer_dir, dst)
    spec = json.loads((dst / "tokenizer.json").read_text())
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    spec["pre_tokenizer"] = None
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    # the generic fast class keeps tokenizer.json as it is (LlamaTokenizer rewrites it)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(dst)
    assert tok.convert_ids_to_tokens(tok(" a", add_special_tokens=False)["input_ids"])[0] == "▁"
    return tok


@pytest.mark.parametrize("legacy", [False, True])
def test_paper_compat_matches_the_papers_preprocessing(tokenizer_dir, tmp_path, legacy):
    from natscale.data.render import Renderer, load_tokenizer
    from natscale.data.render.messages import Message

    tok = (
        _legacy_llama2_tokenizer(tokenizer_dir, tmp_path)
        if legacy
        else load_tokenizer(tokenizer_dir)
    )
    turns = [
        ("user", _INSTR, False),
        ("assistant", _ACK, False),
        ("user", "Question: Is it so? . Generate ... **correctly**.", False),
        ("assistant", "Thought: search.\n\nAction: search[it]\n", True),  # trailing \n trained
        ("user", "Observation: #1: it is.", False),
        ("assistant", "Thought: yes.\n\nAction: finish[Yes]", True),
        ("user", "Observation: Episode finished", False),
    ]
    msgs = [Message(r, t, train) for r, t, train in turns]
    enc = Renderer(tok, "llama2", paper_compat=True).encode(msgs)
    ids, mask = _paper_reference(tok, turns)
    assert enc.ids.tolist() == ids and enc.mask.tolist() == mask
    assert enc.ids[-1] == tok.eos_token_id and enc.mask[-1]  # the </s> after the last turn
    # the default rendering differs: stripped, one string per run, tail untrained
    default = Renderer(tok, "llama2").encode(msgs)
    assert default.ids.tolist() != ids
    if legacy:  # Llama-2's sentencepiece: an extra trained "▁" after every [/INST]
        pieces = tok.convert_ids_to_tokens(ids)
        starts = [k for k in range(1, len(ids)) if mask[k] and not mask[k - 1]]
        assert starts and all(pieces[k] == "▁" for k in starts[:-1])
    # a question's trailing space stays
    spaced = [*turns[:2], ("user", "Question: Is it so? ", False), *turns[3:]]
    enc2 = Renderer(tok, "llama2", paper_compat=True).encode(
        [Message(r, t, train) for r, t, train in spaced]
    )
    assert enc2.ids.tolist() == _paper_reference(tok, spaced)[0]


def test_paper_compat_empty_conversation_trains_only_the_eos(tokenizer_dir, tmp_path):
    empty = {**NAT_STRATEGYQA, "info": {"reward": False}, "conversations": []}
    src = _nat_source(tmp_path, prompt_variant="zero-shot-target-aware")
    write_json(tmp_path / "sq.json", [NAT_STRATEGYQA, empty])
    render = {"tokenizer": str(tokenizer_dir), "template": "llama2", "paper_compat": True}
    cfg = _prepare_config(tokenizer_dir, tmp_path, [src], outcome={"empty": "keep"}, render=render)
    stats = prepare(cfg, progress=False).stats
    assert stats["per_class"]["failure"] == {
        "examples": 1,
        "tokens": stats["per_class"]["failure"]["tokens"],
        "trained_tokens": 1,
    }
    # default rendering: the same record has nothing to train and is dropped
    cfg = _prepare_config(
        tokenizer_dir,
        tmp_path,
        [src],
        output=str(tmp_path / "o2"),
        outcome={"empty": "keep"},
    )
    stats = prepare(cfg, progress=False).stats
    assert stats["dropped"]["no_trained_tokens"] == 1


def test_paper_compat_needs_llama2(tokenizer_dir):
    from natscale.data.render import Renderer, TemplateError, load_tokenizer

    with pytest.raises(TemplateError, match="needs template: llama2"):
        Renderer(load_tokenizer(tokenizer_dir), "chatml", paper_compat=True)
