"""The tokenizer's chat template: a turn is trained on exactly what the model writes at inference.

For every trained assistant turn, the prompt the template renders for generating it
(``add_generation_prompt``) must be the start of the training text, and everything after that
prompt up to the end-of-turn token is trained, template text included. The templates below are
small stand-ins written for these tests, each with one habit of a real family's template.
"""

import json

import pytest

from natscale.cli.main import main
from natscale.config.eval import PromptConfig
from natscale.data.render import (
    Message,
    Renderer,
    TemplateError,
    load_tokenizer,
    read_chat_template,
)
from natscale.eval.errors import EvalError
from natscale.eval.prompting import Prompter

from .test_render import CHATML_JINJA, MESSAGES, trained_spans

# gpt-oss (harmony): the generation prompt stops at the role; the model writes the channel
HARMONY = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ '<|start|>assistant<|channel|>final<|message|>' + m['content'] + '<|end|>' }}"
    "{% else %}{{ '<|start|>' + m['role'] + '<|message|>' + m['content'] + '<|end|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)
# Qwen3: the last assistant turn of a conversation carries an empty reasoning block
LAST_TURN_THINKS = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' and loop.last %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# a whitespace slip: a user turn ends with a newline only when something follows it
LAST_USER_SLIP = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral: the system message goes into the last user turn
SYSTEM_LAST = (
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}"
    "{% set rest = messages[1:] if system else messages %}"
    "{% set last_user = namespace(i=-1) %}{% for m in rest %}"
    "{% if m['role'] == 'user' %}{% set last_user.i = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in rest %}{% if m['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if system and loop.index0 == last_user.i %}{{ system + '\\n\\n' }}{% endif %}"
    "{{ m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
SPECIALS = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|im_start|>", "<|im_end|>"]
WITHOUT_FINAL_OBSERVATION = MESSAGES[:-1]  # ends with the trained finish turn
MESSAGES_ASSISTANT = [m.content for m in MESSAGES if m.role == "assistant" and m.train]


@pytest.fixture
def tok_for(tokenizer_copy):
    def make(jinja: str):
        tok = load_tokenizer(tokenizer_copy)
        tok.add_special_tokens({"additional_special_tokens": SPECIALS})
        tok.chat_template = jinja
        return tok

    return make


def written_at_inference(renderer: Renderer, messages: list[Message]) -> list[list[int]]:
    """Per trained assistant turn: the training tokens after its generation prompt, through the
    first trained token that is not followed by another trained one (the end of the turn)."""
    enc = renderer.encode(messages)
    ids, mask = enc.ids.tolist(), enc.mask.tolist()
    out = []
    for k, msg in enumerate(messages):
        if msg.role == "assistant" and msg.train:
            prompt = renderer.generation_prompt(messages[:k])
            assert ids[: len(prompt)] == prompt, f"turn {k}: the prompt is not where training is"
            end = len(prompt)
            while end < len(ids) and mask[end]:
                end += 1
            out.append(ids[len(prompt) : end])
    return out


@pytest.mark.parametrize("jinja", [CHATML_JINJA, HARMONY, LAST_TURN_THINKS])
@pytest.mark.parametrize("messages", [MESSAGES, WITHOUT_FINAL_OBSERVATION])
def test_every_written_token_is_trained_and_nothing_else(tok_for, jinja, messages):
    tok = tok_for(jinja)
    r = Renderer(tok, "hf")
    turns = written_at_inference(r, messages)
    # the trained spans are exactly the tokens after each generation prompt
    assert turns == trained_spans(r.encode(messages))
    texts = [tok.decode(t) for t in turns]
    assert len(texts) == 2 and all(t.rstrip().endswith(("<|im_end|>", "<|end|>")) for t in texts)


def test_template_text_the_model_writes_is_trained(tok_for):
    tok = tok_for(HARMONY)
    texts = [tok.decode(s) for s in trained_spans(Renderer(tok, "hf").encode(MESSAGES))]
    assert texts == [f"<|channel|>final<|message|>{a}<|end|>" for a in MESSAGES_ASSISTANT]

    tok = tok_for(LAST_TURN_THINKS)
    r = Renderer(tok, "hf")
    first, last = [tok.decode(s) for s in trained_spans(r.encode(WITHOUT_FINAL_OBSERVATION))]
    assert first == f"{MESSAGES_ASSISTANT[0]}<|im_end|>"  # followed by an observation: no block
    assert last == f"<think>\n\n</think>\n\n{MESSAGES_ASSISTANT[1]}<|im_end|>"


def test_history_that_differs_from_the_prompt_is_refused(tok_for):
    tok = tok_for(LAST_USER_SLIP)
    r = Renderer(tok, "hf")
    with pytest.raises(TemplateError) as exc:
        r.encode(MESSAGES)
    msg = str(exc.value)
    assert "before message 3 (an assistant turn)" in msg
    assert "<message 2>\\n<|im_end|><|im_start|>assista" in msg  # history
    assert "<message 2><|im_end|><|im_start|>assistan" in msg  # the inference prompt
    assert "render.chat_template" in msg
    # evaluation renders prompts only: an off-the-shelf model with this template still runs
    assert tok.decode(r.generation_prompt(MESSAGES[:3])).endswith("<|im_start|>assistant\n")


def test_a_template_that_moves_the_system_message_says_so(tok_for):
    tok = tok_for(SYSTEM_LAST)
    r = Renderer(tok, "hf")
    assert len(trained_spans(r.encode(MESSAGES))) == 2  # no system message: fine
    with pytest.raises(TemplateError, match="moves the system message"):
        r.encode([Message("system", "Be brief."), *MESSAGES])


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_chat_template_file_replaces_the_tokenizers_and_travels_with_the_data(
    tokenizer_dir, nat_files, tmp_path, capsys
):
    from natscale.data.prepared import PreparedDir

    from .test_prepare import _config

    jinja = _write(tmp_path / "fixed.jinja", HARMONY)
    cfg = _config(tokenizer_dir, nat_files, **{"render.template": "auto"})
    cfg_file = tmp_path / "prepare.yaml"
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["render"]["chat_template"] = str(jinja)
    data["render"]["add_missing_special_tokens"] = False
    data["render"]["end_of_turn"] = "<|end|>"  # as text: the tokenizer lacks it
    cfg_file.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["prepare", str(cfg_file), "--out", str(out)]) == 0
    saved = load_tokenizer(PreparedDir(out).tokenizer)
    assert saved.chat_template == HARMONY
    assert json.loads((out / "stats.json").read_text())["template"] == "hf"

    # the same file for evaluation (a model without --data)
    tok = load_tokenizer(tokenizer_dir)
    prompter = Prompter(PromptConfig(chat_template=str(jinja), end_of_turn="<|end|>"), tok)
    assert prompter.renderer.name == "hf" and tok.chat_template == HARMONY

    # errors name the field and the file
    data["render"]["chat_template"] = str(tmp_path / "missing.jinja")
    cfg_file.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["prepare", str(cfg_file), "--out", str(tmp_path / "o2")]) == 2
    assert "render.chat_template: chat template file" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    broken = _write(tmp_path / "broken.jinja", "{% for m in messages %}\n{{ m['content'] }")
    with pytest.raises(ValueError, match=r"prompt\.chat_template: .*broken\.jinja, line 2"):
        read_chat_template(broken, "prompt.chat_template")
    with pytest.raises(EvalError, match=r"prompt\.chat_template: chat template file"):
        Prompter(PromptConfig(chat_template=str(tmp_path / "nope.jinja")), tok)


# tool calls: stand-ins for Qwen3's (a newline before the call only after text), Llama 3's (the
# call rendered alone, the text left out), Phi-4-mini's (the calls left out beside text) and
# Mistral's (call ids required, echoed by the tool message)
CALL_AFTER_TEXT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{% for c in m['tool_calls'] or [] %}{% if m['content'] %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>' + (c['function'] | tojson) + '</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CALL_ALONE = CALL_AFTER_TEXT.replace(
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}",
    "{{ '<|im_start|>' + m['role'] + '\\n' }}{% if not m['tool_calls'] %}{{ m['content'] }}"
    "{% endif %}",
).replace("{% if m['content'] %}{{ '\\n' }}{% endif %}", "")
CALL_OR_TEXT = CALL_AFTER_TEXT.replace(
    "{% for c in m['tool_calls'] or [] %}",
    "{% for c in m['tool_calls'] or [] if not m['content'] %}",
)
CALL_IDS = CALL_AFTER_TEXT.replace(
    "(c['function'] | tojson)", "(c['function'] | tojson) + ' id=' + c['id']"
).replace(
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}",
    "{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['tool_call_id'] %}"
    "{{ '[' + m['tool_call_id'] + '] ' }}{% endif %}{{ m['content'] }}",
)
CALL = {"name": "calculate", "arguments": {"expression": "5 + 7"}}


def _tool_turns(text: str = "", call_id: str | None = None) -> list[Message]:
    call = {**CALL, "id": call_id} if call_id else CALL
    return [
        Message("user", "Question: What is 5 + 7?"),
        Message("assistant", text, True, [call]),
        Message("observation", "12", name="calculate"),
        Message("assistant", "The answer is 12.", True),
    ]


@pytest.mark.parametrize("text", ["", "Let me compute it."])
def test_tool_calls_with_and_without_text(tok_for, text):
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "5 + 7"}}</tool_call>'
    tok = tok_for(CALL_AFTER_TEXT)
    r = Renderer(tok, "hf", observation_role="tool")
    messages = _tool_turns(text)
    spans = [tok.decode(s) for s in trained_spans(r.encode(messages))]
    assert spans == [f"{text}\n{call}<|im_end|>" if text else f"{call}<|im_end|>",
                     "The answer is 12.<|im_end|>"]  # fmt: skip
    assert written_at_inference(r, messages) == trained_spans(r.encode(messages))
    assert not r.template.drops_tool_call_text()

    tok = tok_for(CALL_ALONE)  # the text is left out, as the template does at inference
    r = Renderer(tok, "hf", observation_role="tool")
    spans = [tok.decode(s) for s in trained_spans(r.encode(messages))]
    assert spans == [f"{call}<|im_end|>", "The answer is 12.<|im_end|>"]
    assert r.template.drops_tool_call_text()


def test_tool_calls_a_template_leaves_out_are_refused(tok_for):
    r = Renderer(tok_for(CALL_OR_TEXT), "hf", observation_role="tool")
    assert len(trained_spans(r.encode(_tool_turns("")))) == 2
    with pytest.raises(TemplateError, match=r"does not render the tool call\(s\) \['calculate'\]"):
        r.encode(_tool_turns("Let me compute it."))


def test_call_ids_reach_the_template(tok_for):
    tok = tok_for(CALL_IDS)
    r = Renderer(tok, "hf", observation_role="tool")
    with pytest.raises(TemplateError, match=r"give every tool call an id"):  # it reads them
        r.encode(_tool_turns())
    text = tok.decode(r.encode(_tool_turns(call_id="call00001")).ids.tolist())
    assert " id=call00001</tool_call>" in text and "tool\n[call00001] 12" in text


def test_tool_results_answer_the_call_their_id_names(tok_for):
    """Parallel calls whose results come back out of order: each result answers the call its
    tool_call_id names, not the call in its position; results without ids go in order."""
    tok = tok_for(CALL_IDS)
    r = Renderer(tok, "hf", observation_role="tool")
    paris, rome = ({**CALL, "id": f"call{city}"} for city in ("Paris", "Rome0"))

    def turns(*answered: str | None) -> list[Message]:
        results = [
            Message("observation", f"result {k}", tool_call_id=a) for k, a in enumerate(answered)
        ]
        return [
            Message("user", "Question: Weather in Paris and Rome?"),
            Message("assistant", "", True, [paris, rome]),
            *results,
            Message("assistant", "Done.", True),
        ]

    text = tok.decode(r.encode(turns("callRome0", "callParis")).ids.tolist())
    assert "tool\n[callRome0] result 0" in text and "tool\n[callParis] result 1" in text
    text = tok.decode(r.encode(turns(None, None)).ids.tolist())
    assert "tool\n[callParis] result 0" in text and "tool\n[callRome0] result 1" in text
    with pytest.raises(ValueError, match=r"tool_call_id 'callLisbon' answers no call"):
        r.encode(turns("callParis", "callLisbon"))


def test_a_turn_with_nothing_to_train_or_a_lost_message_is_refused(tok_for):
    no_end = CALL_AFTER_TEXT.replace("{{ '<|im_end|>\\n' }}", "{{ '\\n' }}")
    with pytest.raises(TemplateError, match="none of the end-of-turn tokens"):
        Renderer(tok_for(no_end), "hf", observation_role="tool")
    no_observation = CALL_AFTER_TEXT.replace(
        "{% for m in messages %}", "{% for m in messages if m['role'] != 'tool' %}"
    )
    r = Renderer(tok_for(no_observation), "hf", observation_role="tool")
    with pytest.raises(TemplateError, match=r"does not render the text of message 2 \(observation"):
        r.encode(_tool_turns(""))


def test_prepare_counts_text_a_template_leaves_out(tokenizer_dir, tmp_path):
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    # the example tokenizer has no <|im_end|>: its </s> ends the turns
    jinja = _write(tmp_path / "alone.jinja", CALL_ALONE.replace("<|im_end|>", "</s>"))
    call = {"type": "function", "id": "c1",
            "function": {"name": "calculate", "arguments": '{"expression": "5 + 7"}'}}  # fmt: skip
    records = [
        {
            "messages": [
                {"role": "user", "content": "What is 5 + 7?"},
                {"role": "assistant", "content": text, "tool_calls": [call]},
                {"role": "tool", "content": "12", "tool_call_id": "c1"},
                {"role": "assistant", "content": "Action: finish[12]"},
            ],
            "answer": "12",
        }
        for text in ("I will compute it.", None, "Computing.")
    ]
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = PrepareConfig.model_validate(
        {
            "sources": [{"format": "openai", "paths": [str(path)]}],
            "outcome": {"success": "all"},
            "render": {
                "tokenizer": str(tokenizer_dir),
                "chat_template": str(jinja),
                "observation_role": "tool",
                "add_missing_special_tokens": True,
            },
            "pack": {"max_seq_len": 256},
        }
    )
    stats = prepare(cfg, tmp_path / "out", progress=False).stats
    assert stats["warnings"]["tool_call_text_dropped"]["count"] == 2
    assert "renders a call alone" in stats["warnings"]["tool_call_text_dropped"]["message"]


@pytest.mark.parametrize("jinja", [CALL_AFTER_TEXT, CALL_ALONE, CALL_IDS])
def test_prompts_found_by_shape_equal_prompts_rendered(tok_for, jinja):
    """With tool calls every conversation is its own layout, so a turn's generation prompt is
    checked once per shape (arguments and ids left out) and found in the history by its end;
    the result must be what rendering each prompt gives."""
    tok = tok_for(jinja)
    fast = Renderer(tok, "hf", observation_role="tool")
    exact = Renderer(tok, "hf", observation_role="tool")
    exact.template._shape_tail = lambda *args: None  # render every prompt
    conversations = []
    for n in range(12):
        turns = [Message("user", f"Question: what is {n} * 3?")]
        for t in range(n % 4 + 1):
            call = {"name": "calculate", "arguments": {"expression": f"{n} * {t}"}}
            call["id"] = f"call{n:03d}{t}"
            turns += [
                Message("assistant", "" if (n + t) % 2 else f"Step {t}.", True, [call]),
                Message("observation", str(n * t), name="calculate"),
            ]
        conversations.append([*turns, Message("assistant", f"It is {n * 3}.", True)])
    for messages in conversations:
        a, b = fast.encode(messages), exact.encode(messages)
        assert a.ids.tolist() == b.ids.tolist() and a.mask.tolist() == b.mask.tolist()
    # found by shape (once per shape and turn), not rendered: 30 turns follow a call
    tails = fast.template._tails
    assert 0 < len(tails) < 30 and all(v is not None for v in tails.values())


def test_end_of_turn_is_the_token_that_closes_a_turn(tok_for):
    """Gemma's tokenizer has EOS <eos> but its turns end with <end_of_turn>: that is what the
    model learns to write, so what prepare records and evaluation stops at."""
    gemma_like = CHATML_JINJA.replace("<|im_start|>", "<start_of_turn>").replace(
        "<|im_end|>", "<end_of_turn>"
    )
    tok = tok_for(gemma_like)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    assert tok.eos_token == "</s>"
    r = Renderer(tok, "hf")
    assert r.end_of_turn == "<end_of_turn>"
    assert [tok.decode(s)[-13:] for s in trained_spans(r.encode(MESSAGES))] == ["<end_of_turn>"] * 2
    assert Renderer(tok_for(CHATML_JINJA), "hf").end_of_turn == "<|im_end|>"
    assert Renderer(tok, "hf", end_of_turn="\n").end_of_turn == "\n"  # as configured
    with pytest.raises(TemplateError, match=r"writes '<end_of_turn>\\n<start_of_turn>user"):
        Renderer(tok, "hf", end_of_turn="</s>")  # one the template never writes


def test_end_of_turn_with_a_builtin_template_is_refused_not_ignored(tok_for):
    """natscale's own templates close a turn with a fixed token; another end_of_turn was
    silently ignored (training and evaluation stopping at something else than configured)."""
    tok = tok_for(CHATML_JINJA)
    with pytest.raises(TemplateError, match=r"'<\|im_end\|>' is read by template: hf only"):
        Renderer(tok, "llama2", end_of_turn="<|im_end|>")
    assert Renderer(tok, "llama2", end_of_turn="</s>").end_of_turn == "</s>"  # the same: fine
    assert (
        Renderer(tok, "chatml").end_of_turn == Renderer(tok, "chatml", end_of_turn=None).end_of_turn
    )


def test_a_template_that_ends_no_turn_is_refused(tok_for):
    """An Alpaca-style template writes no end-of-turn token after an assistant turn: no turn
    would be trained to end, so the renderer refuses it, naming render.end_of_turn; set to what
    the template writes after a turn, that is trained."""
    alpaca = (
        "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:\n{% endif %}"
    )
    tok = tok_for(alpaca)
    with pytest.raises(TemplateError, match=r"looked for \['</s>'.*set render\.end_of_turn"):
        Renderer(tok, "hf")
    r = Renderer(tok, "hf", end_of_turn="\n\n")
    messages = [Message("user", "Question: 2*3?"), Message("assistant", "Action: finish[6]", True)]
    assert [tok.decode(s) for s in trained_spans(r.encode(messages))] == ["Action: finish[6]\n\n"]
    chatml_as_text = CHATML_JINJA.replace("<|im_end|>", "<|eot_id|>")  # not a token here
    with pytest.raises(TemplateError, match=r"add_missing_special_tokens: true"):
        Renderer(tok_for(chatml_as_text), "hf")


@pytest.mark.parametrize(
    "jinja", [CHATML_JINJA, HARMONY, LAST_TURN_THINKS, CALL_AFTER_TEXT, CALL_ALONE]
)
def test_random_conversations_train_exactly_what_follows_each_prompt(tok_for, jinja):
    """Random layouts (system or not, empty texts, tool calls, untrained and back-to-back
    assistant turns, a final observation or not): every trained turn's tokens are exactly the
    tokens after its generation prompt, nothing else is trained, and a renderer that has seen
    other conversations (its caches) encodes each as a fresh one does."""
    import random

    rnd = random.Random(0)
    tok = tok_for(jinja)
    r = Renderer(tok, "hf", observation_role="tool")  # one renderer: its caches are shared
    checked = 0
    for n in range(60):
        messages = [Message("system", "Be brief.")] if rnd.random() < 0.3 else []
        messages.append(Message("user", f"Question {n}: what is {n} + 1?"))
        for t in range(rnd.randint(1, 4)):
            calls = None
            if jinja in (CALL_AFTER_TEXT, CALL_ALONE) and rnd.random() < 0.6:
                calls = [{"name": "calculate", "arguments": {"expression": f"{n} + {t}"}}]
            text = (
                rnd.choice(["", f"Step {t}.", f" Thought {t}\nAction: go "])
                if calls
                else (f"Thought {t}. Action: finish[{n}]")
            )
            messages.append(Message("assistant", text, rnd.random() < 0.85, calls))
            if rnd.random() < 0.85:
                messages.append(Message("observation", rnd.choice(["", f"Observation {t}"])))
        try:
            encoded = r.encode(messages)
        except TemplateError as exc:
            # a turn the template renders without text or end (CALL_ALONE, an empty text), or,
            # for LAST_TURN_THINKS, an assistant turn right after another: the prompt for the
            # second gives the first the think block, the history does not
            allowed = ["no end-of-turn token"]
            if jinja is LAST_TURN_THINKS:
                allowed.append("one way as history")
            assert any(a in str(exc) for a in allowed), exc
            continue
        assert written_at_inference(r, messages) == trained_spans(encoded), messages
        alone = Renderer(tok, "hf", observation_role="tool").encode(messages)  # no caches
        assert encoded.ids.tolist() == alone.ids.tolist()
        assert encoded.mask.tolist() == alone.mask.tolist()
        checked += 1
    assert checked >= 40


def test_the_same_layout_with_other_train_flags_trains_other_turns(tok_for):
    """A renderer caches per layout; which turns train is not part of the layout."""
    r = Renderer(tok_for(CHATML_JINJA), "hf")
    both = r.encode(MESSAGES)
    first_only = [
        m if i != 5 else Message(m.role, m.content, False) for i, m in enumerate(MESSAGES)
    ]
    one = r.encode(first_only)
    assert len(trained_spans(both)) == 2 and len(trained_spans(one)) == 1
    assert trained_spans(one)[0] == trained_spans(both)[0]


def test_a_tool_result_the_template_json_escapes(tok_for):
    """Llama 3's template writes a tool result through ``tojson``: quotes and newlines escaped."""
    as_json = CALL_AFTER_TEXT.replace(
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}",
        "{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'tool' %}"
        "{{ '{\"output\": ' + (m['content'] | tojson) + '}' }}{% else %}{{ m['content'] }}"
        "{% endif %}",
    )
    tok = tok_for(as_json)
    r = Renderer(tok, "hf", observation_role="tool")
    messages = _tool_turns()
    messages[2] = Message("observation", 'He said "12"\nand left ü', name="calculate")
    encoded = r.encode(messages)
    assert '{"output": "He said \\"12\\"\\nand left ü"}' in tok.decode(encoded.ids.tolist())
    assert written_at_inference(r, messages) == trained_spans(encoded)
    assert [tok.decode(s)[-10:] for s in trained_spans(encoded)] == ["<|im_end|>"] * 2
