"""The ``hf`` backend on a tiny model: batching, stopping, failure kinds, bad model inputs."""

from __future__ import annotations

import json
import shutil

import pytest

from natscale.config.eval import EvalConfig, HFConfig, LoopConfig, PromptConfig, SamplingConfig
from natscale.eval.backends import Request
from natscale.eval.errors import EvalError
from natscale.eval.run import run_eval

from .conftest import DATA, read_jsonl


def _hf_fields(model, out, **extra) -> dict:
    fields = {
        "backend": "hf",
        "model": str(model),
        "output": str(out),
        "questions": [str(DATA / "questions.jsonl")],
        "prompt": {"file": str(DATA / "prompt.json"), "template": "llama2"},
        "loop": {"max_new_tokens": 12},
    }
    fields.update(extra)
    return fields


def _backend(
    model, *, batch_size: int, temperature: float = 0.0, max_context=None, protocol="react"
):
    from natscale.eval.backends.hf import HFBackend
    from natscale.eval.prompting import Prompter, load_eval_tokenizer

    prompter = Prompter(
        PromptConfig(file=str(DATA / "prompt.json"), template="llama2"),
        load_eval_tokenizer(model),
    )
    backend = HFBackend(
        str(model),
        prompter,
        HFConfig(batch_size=batch_size),
        LoopConfig(max_new_tokens=12, max_context=max_context, protocol=protocol),
        SamplingConfig(temperature=temperature),
    )
    return backend, prompter


def _requests(prompter, questions):
    return [
        Request(f"q{i}", 0, 0, q, prompter.messages(q, []), seed=i) for i, q in enumerate(questions)
    ]


QUESTIONS = [
    "What is 2 + 2?",
    "A desk lamp costs 180 euros. It is on sale for 10% off. What is the sale price?",
    "Tom has 3 apples and buys 4 more. How many apples does he have now?",
]


def test_batched_generation_equals_one_at_a_time(tiny_model):
    """Left padding must not change a row's greedy output."""
    batched, prompter = _backend(tiny_model, batch_size=8)
    single, _ = _backend(tiny_model, batch_size=1)
    reqs = _requests(prompter, QUESTIONS)
    a, b = batched.generate(reqs), single.generate(reqs)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert all(0 < g.tokens <= 12 for g in a)


def test_context_overflow_is_a_failure_kind(tiny_model, tmp_path):
    backend, prompter = _backend(tiny_model, batch_size=4, max_context=64)
    gens = backend.generate(_requests(prompter, QUESTIONS))
    assert all(g.overflow for g in gens)
    summary = run_eval(
        EvalConfig.model_validate(
            _hf_fields(tiny_model, tmp_path / "run", limit=3, loop={"max_context": 64})
        )
    )
    assert summary["failures"]["context_overflow"] == 3


def test_a_rows_token_budget_does_not_depend_on_its_batch(tiny_model):
    """A short prompt batched with one near loop.max_context still gets all of
    loop.max_new_tokens: the long row's lack of room is its own."""
    backend, prompter = _backend(tiny_model, batch_size=2)
    short, long = QUESTIONS[0], QUESTIONS[0] + " Tom has apples and pears." * 20
    reqs = _requests(prompter, [short, long])
    backend.max_context = len(prompter.ids(reqs[1].messages)) + 4  # room for 4 new tokens
    single, _ = _backend(tiny_model, batch_size=1)
    single.max_context = backend.max_context
    together, alone = backend.generate(reqs), single.generate(reqs)
    assert [(g.text, g.tokens, g.overflow, g.truncated) for g in together] == [
        (g.text, g.tokens, g.overflow, g.truncated) for g in alone
    ]
    assert not together[0].overflow and together[1].tokens <= 4


def test_an_end_of_turn_of_several_tokens_is_a_stop_string(tiny_model):
    from natscale.eval.backends.hf import HFBackend
    from natscale.eval.prompting import Prompter, load_eval_tokenizer

    template = DATA.parent / "chat_templates" / "qwen3_style_thinks.jinja"
    for protocol in ("react", "tool_calls"):
        prompter = Prompter(
            PromptConfig(template="hf", chat_template=str(template), end_of_turn="<|im_end|>"),
            load_eval_tokenizer(tiny_model),
        )
        backend = HFBackend(
            str(tiny_model), prompter, HFConfig(), LoopConfig(protocol=protocol), SamplingConfig()
        )
        assert "<|im_end|>" in backend.stops and backend.eos_ids == [
            prompter.tokenizer.eos_token_id
        ]


def test_random_model_episodes_end_unparseable_and_are_recorded(tiny_model, tmp_path):
    summary = run_eval(EvalConfig.model_validate(_hf_fields(tiny_model, tmp_path / "run", limit=4)))
    episodes = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    assert len(episodes) == 4 and summary["backend"] == "hf"
    for ep in episodes:
        assert ep["info"]["failure"] == "unparseable_action" and ep["info"]["reward"] is False
        assert ep["conversations"][0]["role"] == "assistant" and ep["conversations"][0]["loss"]
        assert ep["conversations"][1]["content"].startswith("Observation: Error: no action")
    assert summary["throughput"]["generated_tokens"] == sum(
        e["info"]["generated_tokens"] for e in episodes
    )
    # a turn that ran to loop.max_new_tokens (12) without an end of turn is counted as cut
    for ep in episodes:
        assert ep["info"]["truncated_turns"] == int(ep["info"]["generated_tokens"] == 12)
    assert summary["truncated_turns"] == sum(e["info"]["truncated_turns"] for e in episodes) > 0
    assert "torch" in summary["versions"] and "transformers" in summary["versions"]


def test_missing_model_dir_and_tokenizer(tiny_model, tmp_path):
    with pytest.raises(EvalError, match=r"model directory .* not found"):
        run_eval(EvalConfig.model_validate(_hf_fields(tmp_path / "nope", tmp_path / "r1")))
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, no_tok / name)
    with pytest.raises(EvalError, match=r"no tokenizer \(tokenizer\.json\)"):
        run_eval(EvalConfig.model_validate(_hf_fields(no_tok, tmp_path / "r2")))
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_sampling_is_seeded(tiny_model):
    backend, prompter = _backend(tiny_model, batch_size=4, temperature=1.0)
    reqs = _requests(prompter, QUESTIONS)
    again = [Request(r.qid, r.sample, r.turn, r.question, r.messages, r.seed) for r in reqs]
    other = [Request(r.qid, r.sample, r.turn, r.question, r.messages, r.seed + 1) for r in reqs]
    first = [g.text for g in backend.generate(reqs)]
    assert first == [g.text for g in backend.generate(again)]
    assert first != [g.text for g in backend.generate(other)]
    greedy, _ = _backend(tiny_model, batch_size=4)
    assert first != [g.text for g in greedy.generate(reqs)]


def test_tool_call_turns_keep_their_special_tokens(tiny_model, tmp_path):
    """A model may write its calls with special tokens (Mistral's ``[TOOL_CALLS]``): with native
    tool calls they stay in the text the parser reads; the end of the turn does not."""
    react, prompter = _backend(tiny_model, batch_size=1)
    native, _ = _backend(tiny_model, batch_size=1, protocol="tool_calls")
    tok = prompter.tokenizer
    ids = [*tok.encode("Call", add_special_tokens=False), tok.bos_token_id, tok.eos_token_id]
    assert native._decode(ids, 12).text == "Call<s>" and react._decode(ids, 12).text == "Call"
    assert native.stops == [] and react.stops == ["\nObservation:"]

    fields = _hf_fields(tiny_model, tmp_path / "run", limit=2)
    summary = run_eval(
        EvalConfig.model_validate(
            {**fields, "loop": {"protocol": "tool_calls", "max_new_tokens": 12}}
        )
    )
    assert summary["protocol"] == "tool_calls" and summary["episodes"] == 2
    for rec in read_jsonl(tmp_path / "run" / "episodes.jsonl"):
        assert "conversations" not in rec and rec["messages"][-1]["role"] == "assistant"
        assert [t["function"]["name"] for t in rec["tools"]] == ["calculate", "finish"]


def test_a_wrongly_typed_model_config_field_names_the_file(tiny_model, tmp_path):
    # transformers' StrictDataclassFieldValidationError went through as a traceback, from the
    # tokenizer (which reads the folder's config.json) and from the model
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(
        json.dumps({**config, "vocab_size": str(config["vocab_size"])})
    )
    expected = r"config\.json: .*Field 'vocab_size' expected int"
    with pytest.raises(EvalError, match=expected):
        run_eval(EvalConfig.model_validate(_hf_fields(bad, tmp_path / "r1")))
    prompt = {"file": str(DATA / "prompt.json"), "template": "llama2", "tokenizer": str(tiny_model)}
    with pytest.raises(EvalError, match=expected) as err:
        run_eval(EvalConfig.model_validate(_hf_fields(bad, tmp_path / "r2", prompt=prompt)))
    assert str(bad / "config.json") in str(err.value)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_a_truncated_safetensors_file_is_named_as_damaged(tiny_model, tmp_path):
    # from_pretrained's SafetensorError went through as a traceback
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # head -c 1000
    with pytest.raises(EvalError, match=r"model\.safetensors \(1,000 bytes\) is damaged") as err:
        run_eval(EvalConfig.model_validate(_hf_fields(bad, tmp_path / "r1")))
    assert str(weights) in str(err.value) and not (tmp_path / "r1").exists()
