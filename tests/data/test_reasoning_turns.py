"""Reasoning traces (``<think>``) through chat templates that render them apart from the answer.

``THINKS`` is a stand-in written for these tests with the habits of Qwen3's template: a
turn's ``<think>`` block is split from its answer and written back in the template's own
whitespace; the last turn always gets a block; the reasoning of turns before the last user
message is left out of the history. Every trained turn must be trained on exactly the tokens
the model writes after the prompt it is given at inference, with its reasoning.
"""

import json
from pathlib import Path

import pytest

from natscale.config.eval import PromptConfig
from natscale.data.formats.openai import load as load_openai
from natscale.data.render import Message, Renderer, TemplateError, load_tokenizer
from natscale.eval.prompting import Prompter

from .test_chat_template_turns import written_at_inference
from .test_render import trained_spans

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Qwen3's habits: a turn's reasoning split from its answer at </think>; the last turn always gets
# a block; turns before the last user message lose theirs (shared with the render benchmark)
THINKS = (EXAMPLES / "chat_templates" / "qwen3_style_thinks.jinja").read_text()
# DeepSeek-R1's habit: every assistant turn, the last included, loses its reasoning
DROPS_ALL = THINKS.replace("loop.index0 > ns.last and (loop.last or thought)", "false")

QUESTION = [Message("user", "What is 2 + 3 * 4?")]
FIRST = "<think>\nMultiply first.\n</think>\n\nAction: calculate[3 * 4]"
SECOND = "<think>Now add 2.</think>Action: finish[14]"  # not the template's whitespace
TURNS = [
    Message("assistant", FIRST, True),
    Message("observation", "12"),
    Message("assistant", SECOND, True),
]


@pytest.fixture
def tok(tokenizer_copy):
    tok = load_tokenizer(tokenizer_copy)
    tok.add_tokens(["<think>", "</think>"])  # as Qwen3's: added, not special
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = THINKS
    return tok


def reference_ids(tok, messages: list[Message], role: str, *, generation: bool = False):
    """What transformers gives for the same messages: the template's text, tokenised whole."""
    roles = {"observation": role}
    hf = [{"role": roles.get(m.role, m.role), "content": m.content} for m in messages]
    text = tok.apply_chat_template(hf, tokenize=False, add_generation_prompt=generation)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_final_turn_is_trained_with_its_reasoning_as_the_template_writes_it(tok):
    r = Renderer(tok, "hf")
    messages = [*QUESTION, TURNS[0]]
    enc = r.encode(messages)
    assert enc.ids.tolist() == reference_ids(tok, messages, "user")
    (span,) = trained_spans(enc)
    assert tok.decode(span) == f"{FIRST}<|im_end|>"
    assert tok.convert_tokens_to_ids("<think>") in span  # one token, as the model writes it
    assert written_at_inference(r, messages) == [span]
    # the template's whitespace, not the data's, is what the model writes
    enc = r.encode([*QUESTION, TURNS[2]])
    (span,) = trained_spans(enc)
    want = "<think>\nNow add 2.\n</think>\n\nAction: finish[14]<|im_end|>"
    assert tok.decode(span) == want


def test_history_that_keeps_reasoning_trains_every_turn_in_one_example(tok):
    """With observations in the tool role the last user message is the question, so the
    template keeps every later turn's reasoning in the history."""
    r = Renderer(tok, "hf", observation_role="tool")
    messages = [*QUESTION, *TURNS]
    enc = r.encode(messages)
    assert enc.ids.tolist() == reference_ids(tok, messages, "tool")
    first, second = (tok.decode(s) for s in trained_spans(enc))
    assert first == f"{FIRST}<|im_end|>"
    assert second == "<think>\nNow add 2.\n</think>\n\nAction: finish[14]<|im_end|>"
    assert trained_spans(enc) == written_at_inference(r, messages)


def test_history_that_drops_reasoning_is_refused_with_the_way_out(tok):
    with pytest.raises(TemplateError) as exc:
        Renderer(tok, "hf").encode([*QUESTION, *TURNS])
    msg = str(exc.value)
    assert "leaves out the reasoning (<think>) of message 1" in msg
    assert "'Multiply first.'" in msg and "render.turns: each" in msg


def test_each_turn_after_the_history_the_model_is_shown(tok):
    from natscale.data.nat import Example, each_turn
    from natscale.data.trajectory import Trajectory, Turn

    traj = Trajectory(
        "t",
        QUESTION[0].content,
        [Turn(m.role, m.content) for m in TURNS],
    )
    examples = each_turn(Example(traj, 0, 1.0, traj.question))
    assert [[t.train for t in ex.traj.turns] for ex in examples] == [[True], [False, False, True]]
    r = Renderer(tok, "hf")
    spans = []
    for ex in examples:
        messages = [*QUESTION, *(Message(t.role, t.content, t.train) for t in ex.traj.turns)]
        enc = r.encode(messages)
        assert enc.ids.tolist() == reference_ids(tok, messages, "user")
        # the history is the inference prompt: the earlier turn without its reasoning
        prompt = r.generation_prompt(messages[:-1])
        assert prompt == reference_ids(tok, messages[:-1], "user", generation=True)
        assert enc.ids[: len(prompt)].tolist() == prompt and not enc.mask[: len(prompt)].any()
        (span,) = trained_spans(enc)
        spans.append(tok.decode(span))
    assert spans == [
        f"{FIRST}<|im_end|>",
        "<think>\nNow add 2.\n</think>\n\nAction: finish[14]<|im_end|>",
    ]
    assert "Multiply first." not in tok.decode(r.generation_prompt([*QUESTION, *TURNS[:2]]))
    # one trained turn or none: the example as it is
    assert each_turn(examples[0]) == [examples[0]]


def test_a_template_that_drops_the_trained_turns_reasoning_is_refused(tok):
    tok.chat_template = DROPS_ALL
    with pytest.raises(TemplateError) as exc:
        Renderer(tok, "hf").encode([*QUESTION, TURNS[0]])
    msg = str(exc.value)
    assert "leaves out the reasoning (<think>) of message 1" in msg
    assert "render.turns" not in msg and "render.chat_template" in msg
    with pytest.raises(TemplateError) as exc:  # render.turns: each would not help
        Renderer(tok, "hf").encode([*QUESTION, *TURNS])
    assert "render.turns" not in str(exc.value)
    # an answer the template rewrites is refused too
    tok.chat_template = THINKS.replace("{{ answer }}", "{{ answer | upper }}")
    with pytest.raises(TemplateError, match="changes the text of message 1"):
        Renderer(tok, "hf").encode([*QUESTION, TURNS[0]])


def test_tool_calls_after_reasoning(tok):
    calls = "{% for c in m['tool_calls'] or [] %}{{ '<call>' + c['function']['name'] }}{% endfor %}"
    tok.chat_template = THINKS.replace("{{ answer }}", "{{ answer }}" + calls)
    call = [{"name": "calculate", "arguments": {"expression": "3 * 4"}}]
    messages = [*QUESTION, Message("assistant", "<think>\nMultiply.\n</think>", True, call)]
    (span,) = trained_spans(Renderer(tok, "hf").encode(messages))
    assert tok.decode(span) == "<think>\nMultiply.\n</think>\n\n<call>calculate<|im_end|>"
    tok.chat_template = THINKS  # renders no calls
    with pytest.raises(TemplateError, match=r"does not render the tool call\(s\) \['calculate'\]"):
        Renderer(tok, "hf").encode(messages)


def test_evaluation_prompts_with_reasoning_in_the_history(tok):
    """The agent's own turns, reasoning and all, become history as the template shows it."""
    r = Renderer(tok, "hf")
    history = [*QUESTION, *(Message(m.role, m.content) for m in TURNS[:2])]
    assert r.generation_prompt(history) == reference_ids(tok, history, "user", generation=True)
    r = Renderer(tok, "hf", observation_role="tool")
    assert r.generation_prompt(history) == reference_ids(tok, history, "tool", generation=True)


def test_untrained_content_is_rendered_as_the_template_renders_it(tok):
    tok.chat_template = THINKS.replace(
        "{{ m['content'] }}", "{{ '[hidden]' if 'SECRET' in m['content'] else m['content'] }}"
    )
    r = Renderer(tok, "hf")
    messages = [*QUESTION[:0], Message("user", "SECRET question"), TURNS[0]]
    enc = r.encode(messages)
    assert enc.ids.tolist() == reference_ids(tok, messages, "user")
    assert "[hidden]" in tok.decode(enc.ids) and "SECRET" not in tok.decode(enc.ids)


def _records(reasoning: bool = True) -> list[dict]:
    add, done = (
        ({"reasoning_content": "Add."}, {"reasoning": "\nDone.\n"}) if reasoning else ({}, {})
    )
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is 2 + {n}?"},
                {"role": "assistant", "content": "Action: add", **add},
                {"role": "user", "content": f"{2 + n}"},
                {"role": "assistant", "content": f"finish[{2 + n}]", **done},
            ],
            "answer": str(2 + n),
        }
        for n in range(3)
    ]


def test_openai_reasoning_fields_become_think_blocks(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    kw = dict(question_turn=0, messages_key="messages", tools_field=None, task="", reasoning="keep")
    kw |= dict(success_field=None, score_field=None, answer_field="answer")
    (traj, *_) = load_openai([path], **kw)
    assert [t.content for t in traj.turns] == [
        "<think>\nAdd.\n</think>\n\nAction: add",
        "2",
        "<think>\nDone.\n</think>\n\nfinish[2]",
    ]
    bad = _records()[0]
    bad["messages"][1]["content"] = "<think>x</think>Action: add"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 1: field 'messages\[1\]\.content': .*one place"):
        load_openai([path], **kw)
    bad["messages"][1] |= {"content": "Action: add", "reasoning": "Other."}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"reasoning_content and reasoning differ"):
        load_openai([path], **kw)
    # gpt-oss data (thinking); the same text in two fields is no conflict
    good = _records()[0]
    good["messages"][1] = {"role": "assistant", "content": "Action: add", "thinking": "Add."}
    good["messages"][3]["reasoning_content"] = "Done."
    path.write_text(json.dumps(good) + "\n")
    (traj,) = load_openai([path], **kw)
    assert traj.turns[0].content == "<think>\nAdd.\n</think>\n\nAction: add"
    assert traj.turns[2].content == "<think>\nDone.\n</think>\n\nfinish[2]"
    (traj,) = load_openai([path], **{**kw, "reasoning": "drop"})  # to train without it
    assert [t.content for t in traj.turns] == ["Action: add", "2", "finish[2]"]


def test_prepare_with_each_turn(tok, tmp_path):
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare
    from natscale.data.prepared import PreparedDir

    tok.save_pretrained(tmp_path / "tok")
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))

    def run(turns: str, out: str):
        cfg = {
            "sources": [{"format": "openai", "paths": [str(path)]}],
            "outcome": {"success": "all"},
            "render": {"tokenizer": str(tmp_path / "tok"), "turns": turns},
            "pack": {"max_seq_len": 512, "algorithm": "none"},
        }
        return prepare(PrepareConfig.model_validate(cfg), tmp_path / out, progress=False)

    # one example per trajectory: every one is refused (the history drops the reasoning)
    with pytest.raises(ValueError, match=r"render\.turns: each"):
        run("all", "all")
    result = run("each", "each")
    assert result.stats["turns"] == "each"
    assert result.stats["trajectories"]["loaded"] == 3
    assert sum(c["examples"] for c in result.stats["per_class"].values()) == 6
    rows = PreparedDir(tmp_path / "each").open().with_format("numpy")
    assert len(rows) == 6  # pack.algorithm none: an example a row
    texts = sorted(tok.decode(row["targets"][row["targets"] != -100]) for row in rows)
    assert texts[:3] == ["<think>\nAdd.\n</think>\n\nAction: add<|im_end|>"] * 3
    assert "<think>\nDone.\n</think>\n\nfinish[4]<|im_end|>" in texts


@pytest.mark.parametrize("role", ["user", "tool"])
def test_random_conversations_train_each_turn_with_its_reasoning(tok, role):
    """user: the history drops reasoning, so one example per turn (render.turns: each); tool:
    it keeps it, so one example trains every turn."""
    import random

    from natscale.data.nat import Example, each_turn
    from natscale.data.trajectory import Trajectory, Turn

    rng = random.Random(7)
    r = Renderer(tok, "hf", observation_role=role)
    for case in range(40):
        turns, thoughts = [], []
        for t in range(rng.randint(1, 4)):
            thought = f"step {t} of case {case}" if rng.random() < 0.7 else ""
            gap = rng.choice(["", "\n", "\n\n"])
            think = f"<think>{gap}{thought}{gap}</think>{gap}" if thought else ""
            turns += [Turn("assistant", f"{think}Action: act[{t}]"), Turn("observation", f"{t}")]
            thoughts.append(thought)
        traj = Trajectory(str(case), f"Question {case}?", turns[:-1])
        examples = [Example(traj, 0, 1.0, traj.question)]
        if role == "user":
            examples = each_turn(examples[0])
        spans = []
        for ex in examples:
            messages = [Message("user", ex.query)]
            messages += [Message(t.role, t.content, t.train) for t in ex.traj.turns]
            enc = r.encode(messages)
            assert enc.ids.tolist() == reference_ids(tok, messages, role), case
            found = trained_spans(enc)
            assert found == written_at_inference(r, messages), case
            spans += found
        assert len(spans) == len(thoughts)
        for span, thought in zip(spans, thoughts, strict=True):
            assert thought in tok.decode(span)


@pytest.mark.parametrize("role", ["user", "tool"])
def test_random_mixed_conversations_are_trained_right_or_refused(tok, role):
    """Assistant turns with and without reasoning, trained or not, observations and follow-up
    user questions: one example per trajectory is trained exactly as the model writes each turn
    after its own prompt, or refused; one example per turn (render.turns: each) always is."""
    import random

    from natscale.data.nat import Example, each_turn
    from natscale.data.trajectory import Trajectory, Turn

    rng = random.Random(11)
    r = Renderer(tok, "hf", observation_role=role)
    outcomes = {"trained": 0, "refused": 0}
    for case in range(60):
        turns = []
        for t in range(rng.randint(1, 5)):
            thought = f"reason {t} of {case}" if rng.random() < 0.6 else ""
            think = f"<think>\n{thought}\n</think>\n\n" if thought else ""
            train = rng.random() < 0.7
            turns.append(Turn("assistant", f"{think}Action: act[{t}]", train=train))
            turns.append(Turn("observation" if rng.random() < 0.7 else "user", f"{t}"))
        if rng.random() < 0.5:
            turns.pop()  # end with the assistant
        traj = Trajectory(str(case), f"Question {case}?", turns)
        whole = Example(traj, 0, 1.0, traj.question)
        for each in (False, True):
            for ex in each_turn(whole) if each else [whole]:
                messages = [Message("user", ex.query)]
                messages += [Message(t.role, t.content, t.train) for t in ex.traj.turns]
                if not any(m.train for m in messages):
                    continue
                try:
                    enc = r.encode(messages)
                except TemplateError:
                    assert not each, case
                    outcomes["refused"] += 1
                    continue
                outcomes["trained"] += not each
                assert enc.ids.tolist() == reference_ids(tok, messages, role), case
                spans = trained_spans(enc)
                assert spans == written_at_inference(r, messages), case
                written = [m.content for m in messages if m.train]
                assert len(spans) == len(written), case
                for span, content in zip(spans, written, strict=True):
                    text = tok.decode(span)
                    assert all(part in text for part in content.split("\n") if part), case
    assert outcomes["refused"] and outcomes["trained"]  # both kinds were drawn


# Qwen3's switch: without thinking, the generation prompt holds an empty reasoning block
NO_THINKING = THINKS.replace(
    "{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is defined and not enable_thinking %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}",
)


def test_chat_template_kwargs_reach_the_template(tok, tmp_path):
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare
    from natscale.eval.prepared import prompt_defaults

    tok.chat_template = NO_THINKING
    messages = [*QUESTION, Message("assistant", "Action: finish[14]", True)]
    off = {"enable_thinking": False}
    (span,) = trained_spans(Renderer(tok, "hf").encode(messages))
    assert tok.decode(span) == "<think>\n\n</think>\n\nAction: finish[14]<|im_end|>"
    r = Renderer(tok, "hf", chat_template_kwargs=off)
    enc = r.encode(messages)
    hf = [{"role": m.role, "content": m.content} for m in messages]
    text = tok.apply_chat_template(hf, tokenize=False, enable_thinking=False)
    assert enc.ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    (span,) = trained_spans(enc)
    assert tok.decode(span) == "Action: finish[14]<|im_end|>"  # the empty block is the prompt's
    assert tok.decode(r.generation_prompt(QUESTION)).endswith("<think>\n\n</think>\n\n")
    # earlier turns are shown without the block the prompt gave them: one example per turn
    plain = [Message("assistant", "Action: add", True), Message("observation", "5")]
    with pytest.raises(TemplateError, match=r"render\.turns: each"):
        r.encode([*QUESTION, *plain, messages[-1]])
    with pytest.raises(TemplateError, match=r"\['add_generation_prompt'\] are set by natscale"):
        Renderer(tok, "hf", chat_template_kwargs={"add_generation_prompt": True})
    with pytest.raises(TemplateError, match="'chatml' is natscale's own"):
        Renderer(tok, "chatml", chat_template_kwargs=off)

    # recorded with the data: evaluation renders its prompts the same way
    tok.save_pretrained(tmp_path / "tok")
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(reasoning=False)))
    cfg = {
        "sources": [{"format": "openai", "paths": [str(path)]}],
        "outcome": {"success": "all"},
        "render": {"tokenizer": str(tmp_path / "tok"), "turns": "each"},
        "pack": {"max_seq_len": 512},
    }
    cfg["render"]["chat_template_kwargs"] = off
    prepare(PrepareConfig.model_validate(cfg), tmp_path / "out", progress=False)
    section = prompt_defaults(tmp_path / "out")
    assert section["chat_template_kwargs"] == off
    prompter = Prompter(PromptConfig.model_validate(section), load_tokenizer(section["tokenizer"]))
    ids = prompter.ids(prompter.messages("What is 2 + 3?", []))
    assert tok.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_turn_is_never_found_in_a_later_one(tok):
    """Two identical turns: the first one's reasoning, dropped from the history, is in the
    second one's text; it must not be taken for the first's (its span would run over the
    observation between them)."""
    same = Message("assistant", FIRST, True)
    messages = [*QUESTION, same, Message("observation", "12"), same]
    with pytest.raises(TemplateError, match="leaves out the reasoning"):
        Renderer(tok, "hf").encode(messages)


def test_untrained_reasoning_the_prompt_shows_otherwise_is_refused(tok):
    """Observations as tool turns: an untrained turn's reasoning is kept in the prompt of the
    next turn (the last user message is the question), but dropped from the history once the
    user asks again; training that next turn after the history would train it after text its
    prompt does not have."""
    thought = Message("assistant", FIRST)  # untrained, with its reasoning
    later = [Message("assistant", "Action: finish[12]", True), Message("user", "And 2 * 6?")]
    answer = Message("assistant", "Action: finish[24]", True)
    messages = [*QUESTION, thought, Message("observation", "12"), *later, answer]
    r = Renderer(tok, "hf", observation_role="tool")
    with pytest.raises(TemplateError, match=r"before message 3 .* render\.turns: each"):
        r.encode(messages)
    # one example per turn: each after the history its own prompt shows
    for k in (3, 5):
        cut = [
            Message(m.role, m.content, j == k and m.role == "assistant")
            for j, m in enumerate(messages[: k + 1])
        ]
        enc = r.encode(cut)
        assert enc.ids.tolist() == reference_ids(tok, cut, "tool")
        assert trained_spans(enc) == written_at_inference(r, cut)
    assert "Multiply first." in tok.decode(r.generation_prompt(messages[:3]))
    assert "Multiply first." not in tok.decode(r.generation_prompt(messages[:5]))


def _exactly(tok, role: str) -> Renderer:
    """A renderer that renders every trained turn's generation prompt (as natscale did before
    it found them in one render): the reference for the prompts found."""
    r = Renderer(tok, "hf", observation_role=role)
    r.template._prompts_in = lambda *args: None
    return r


def _encode_or_error(r: Renderer, messages: list[Message]):
    try:
        enc = r.encode(messages)
    except TemplateError as exc:
        return str(exc)
    return enc.ids.tolist(), enc.mask.tolist()


@pytest.mark.parametrize("role", ["user", "tool"])
def test_prompts_found_in_one_render_equal_prompts_rendered(tok, role):
    """Trained turns rendered apart from their content (_by_prompts) take their generation
    prompts from one render of the last trained turn's prompt; each conversation must encode
    (or be refused) exactly as rendering every prompt does: reasoning or not, trained or not,
    tool calls (their arguments differ, so every conversation is a layout of its own), tool and
    user turns, a final observation or not, and conversations of the same layout again."""
    import random

    calls = "{% for c in m['tool_calls'] or [] %}{{ '<call>' + (c['function'] | tojson) }}"
    tok.chat_template = THINKS.replace("{{ answer }}", "{{ answer }}" + calls + "{% endfor %}")
    rng = random.Random(5)
    fast, exact = Renderer(tok, "hf", observation_role=role), _exactly(tok, role)
    found = []
    prompts_in = fast.template._prompts_in

    def counted(history, trained, tools, real):
        out = prompts_in(history, trained, tools, real)
        found.append(len(out.ends) if out is not None else 0)
        return out

    fast.template._prompts_in = counted
    outcomes = {"same": 0, "refused": 0}
    for case in range(80):
        messages = [Message("user", f"Question {case}?")]
        for t in range(rng.randint(1, 6)):
            # user turns drop earlier turns' reasoning (refused): rarer there
            has = rng.random() < (0.7 if role == "tool" else 0.2)
            thought = f"<think>\nreason {t} of {case % 7}\n</think>\n\n" if has else ""
            call = None
            if rng.random() < 0.3:
                call = [{"name": "calculate", "arguments": {"expression": f"{case} * {t}"}}]
            train = rng.random() < 0.8
            messages.append(Message("assistant", f"{thought}Action: act[{t}]", train, call))
            messages.append(Message("observation" if rng.random() < 0.8 else "user", f"{t}"))
        if rng.random() < 0.7:
            messages.pop()  # end with the assistant
        if not any(m.train for m in messages):
            continue
        a, b = _encode_or_error(fast, messages), _encode_or_error(exact, messages)
        assert a == b, (case, messages)
        outcomes["refused" if isinstance(a, str) else "same"] += 1
    assert outcomes["same"] >= 15 and outcomes["refused"]
    # the prompts of several turns of a conversation were found, not rendered
    assert sum(n > 1 for n in found) >= 5


def _render_counter(r: Renderer, monkeypatch) -> list[int]:
    """Counts the chat template's renders by ``r`` (through apply_chat_template or straight)."""
    count = [0]
    tok = r.template.tokenizer
    apply = tok.apply_chat_template

    def counted_apply(*args, **kwargs):
        count[0] += 1
        return apply(*args, **kwargs)

    monkeypatch.setattr(tok, "apply_chat_template", counted_apply)
    template, variables = r.template._direct

    class Counted:
        def render(self, *args, **kwargs):
            count[0] += 1
            return template.render(*args, **kwargs)

    r.template._direct = (Counted(), variables)
    return count


def test_a_long_conversation_is_rendered_a_fixed_number_of_times(tok, monkeypatch):
    """A conversation whose last trained turn the template renders apart from its content
    (Qwen3's adds the last turn's <think> block itself) is cut at each trained turn's generation
    prompt. Rendering each prompt costs one render per trained turn, each of the conversation so
    far: quadratic in its length (128 steps took 30 times longer than the built-in template).
    Once its layout has been seen, a conversation costs the same few renders at any length."""
    fast = Renderer(tok, "hf", observation_role="tool")
    exact = _exactly(tok, "tool")

    def conversation(steps: int, n: int) -> list[Message]:
        messages = [Message("user", f"Question {n}: what is {n} * {steps}?")]
        for t in range(steps):
            thought = f"<think>\nStep {t} of {n}.\n</think>\n\n"
            messages += [
                Message("assistant", f"{thought}Action: calculate[{n} * {t}]", True),
                Message("observation", f"{n * t}"),
            ]
        return [*messages, Message("assistant", "<think>\nDone.\n</think>\n\nfinish[0]", True)]

    for steps in (4, 40):  # each layout once: its placeholder prompts are checked
        fast.encode(conversation(steps, 0))
    count = _render_counter(fast, monkeypatch)
    renders = {}
    for steps in (4, 40):
        messages = conversation(steps, 1)
        before = count[0]
        enc = fast.encode(messages)
        renders[steps] = count[0] - before
        want = exact.encode(messages)
        assert enc.ids.tolist() == want.ids.tolist() and enc.mask.tolist() == want.mask.tolist()
        assert len(trained_spans(enc)) == steps + 1
    # the conversation and its last turn's prompt: two renders, not one per turn
    assert renders == {4: 2, 40: 2}
