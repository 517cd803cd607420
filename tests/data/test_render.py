"""Golden rendering tests: the trained tokens decode to exactly the assistant texts."""

import re

import numpy as np
import pytest

from natscale.data.render import (
    Message,
    Renderer,
    TemplateError,
    add_missing_tokens,
    load_tokenizer,
    trajectory_messages,
)
from natscale.data.trajectory import Trajectory, Turn

NASTY = "Observation: 12 </s><s>[INST] <|im_end|> <|eot_id|> [/INST] <<SYS>>"
ASSISTANT = ["Thought: add them.\nAction: calculate[5 + 7]", "Thought: done.\nAction: finish[12]"]
MESSAGES = [
    Message("user", "Solve a math problem."),
    Message("assistant", "I've understood your instruction, start please."),
    Message("user", "Question: What is 5 + 7?. Solve it correctly."),
    Message("assistant", ASSISTANT[0], True),
    Message("observation", NASTY),
    Message("assistant", ASSISTANT[1], True),
    Message("observation", "Observation: Episode finished"),
]
CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture
def tok_with(tokenizer_copy):
    """The example tokenizer with the tokens of ``template`` added and ``jinja`` set."""

    def make(template: str | None = None, jinja: str | None = None):
        tok = load_tokenizer(tokenizer_copy)
        if template:
            add_missing_tokens(tok, template)
        tok.chat_template = jinja
        return tok

    return make


def trained_spans(enc) -> list[list[int]]:
    spans, cur = [], []
    for i, m in zip(enc.ids.tolist(), enc.mask.tolist(), strict=True):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


def check_golden(tok, renderer: Renderer, eot: str, n_special: int):
    enc = renderer.encode(MESSAGES)
    assert enc.ids.dtype == np.int32 and enc.mask.dtype == bool and len(enc.ids) == len(enc.mask)
    eot_id = tok.convert_tokens_to_ids(eot)
    spans = trained_spans(enc)
    assert len(spans) == 2
    for span, text in zip(spans, ASSISTANT, strict=True):
        assert span[-1] == eot_id and eot_id not in span[:-1]
        assert tok.decode(span[:-1]).strip() == text
    # template syntax inside the observation stays text: only the template's own specials exist
    special = {tok.convert_tokens_to_ids(t) for t in tok.get_added_vocab()}
    n_special = sum(i in special for i in enc.ids.tolist())
    assert n_special == n_special
    assert NASTY in tok.decode(enc.ids.tolist())
    # the inference prompt is a prefix of the training encoding (same tokens at inference)
    gen = renderer.generation_prompt(MESSAGES[:3])
    assert enc.ids.tolist()[: len(gen)] == gen
    return enc


def test_llama2_golden(tokenizer):
    r = Renderer(tokenizer, "llama2")
    enc = check_golden(tokenizer, r, "</s>", n_special=4 + 3)  # <s> per user, </s> per reply
    text = tokenizer.decode(enc.ids.tolist())
    assert text.startswith("<s>") and "[INST] Solve a math problem. [/INST] I've understood" in text
    assert r.generation_prompt(MESSAGES[:3])[-1] != tokenizer.eos_token_id


def test_chatml_golden(tok_with):
    tok = tok_with("chatml")
    r = Renderer(tok, "chatml", observation_role="tool")
    check_golden(tok, r, "<|im_end|>", n_special=2 * len(MESSAGES))
    text = tok.decode(r.generation_prompt(MESSAGES[:5]))
    assert "tool\nObservation: 12" in text
    assert re.search(r"<\|im_start\|>\s?assistant\n$", text)


def test_llama3_golden(tok_with):
    tok = tok_with("llama3")
    r = Renderer(tok, "llama3")
    check_golden(tok, r, "<|eot_id|>", n_special=1 + 3 * len(MESSAGES))


def test_hf_chat_template_matches_builtins(tok_with):
    tok = tok_with("chatml", CHATML_JINJA)
    assert Renderer(tok, "auto").name == "hf"
    hf, builtin = Renderer(tok, "hf").encode(MESSAGES), Renderer(tok, "chatml").encode(MESSAGES)
    assert hf.ids.tolist() == builtin.ids.tolist() and hf.mask.tolist() == builtin.mask.tolist()
    check_golden(tok, Renderer(tok, "hf"), "<|im_end|>", n_special=2 * len(MESSAGES))
    tok = tok_with(
        None,
        LLAMA2_JINJA.replace(
            "message['role'] == 'user'", "message['role'] in ('user', 'observation')"
        ),
    )
    hf, builtin = Renderer(tok, "hf", observation_role="observation"), Renderer(tok, "llama2")
    assert hf.encode(MESSAGES).ids.tolist() == builtin.encode(MESSAGES).ids.tolist()
    assert hf.encode(MESSAGES).mask.tolist() == builtin.encode(MESSAGES).mask.tolist()


def test_hf_template_that_rewrites_content_is_refused(tok_with):
    tok = tok_with(
        "chatml", CHATML_JINJA.replace("message['content']", "message['content'] | upper")
    )
    with pytest.raises(TemplateError, match="changes the text of message 3"):
        Renderer(tok, "hf").encode(MESSAGES)
    with pytest.raises(TemplateError, match="no chat_template"):
        Renderer(tok_with("chatml"), "hf")
    strict = (
        "{% if messages[1]['role'] != 'assistant' %}{{ raise_exception('alternate!') }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="chat template failed: alternate!"):
        Renderer(tok_with("chatml", strict + CHATML_JINJA), "hf").encode(MESSAGES[3:])


def test_missing_special_tokens_are_named(tokenizer):
    with pytest.raises(
        TemplateError, match=r"needs special tokens \['<\|im_start\|>', '<\|im_end\|>'\]"
    ):
        Renderer(tokenizer, "chatml")


def test_loss_flags_tool_calls_and_system(tokenizer, tok_with):
    traj = Trajectory(
        id="t",
        question="Q?",
        system="Be brief.",
        instruction="Solve.",
        turns=[
            Turn("assistant", "", tool_calls=[{"name": "calc", "arguments": {"x": "1+1"}}]),
            Turn("observation", "2", name="calc"),
            Turn("assistant", "2", train=False),
            Turn("user", "trained user text", train=True),
        ],
    )
    msgs = trajectory_messages(traj, "Question: Q?")
    assert [m.role for m in msgs][:4] == ["system", "user", "assistant", "user"]
    tok = tok_with("chatml")
    enc = Renderer(tok, "chatml").encode(msgs)
    spans = [tok.decode(s) for s in trained_spans(enc)]
    assert spans == [
        '<tool_call>\n{"name": "calc", "arguments": {"x": "1+1"}}\n</tool_call><|im_end|>',
        "trained user text",
    ]
    text = tokenizer.decode(Renderer(tokenizer, "llama2").encode(msgs).ids.tolist())
    assert re.match(r"<s> ?\[INST\] <<SYS>>\nBe brief.\n<</SYS>>\n\nSolve. \[/INST\]", text)


def _hf_encoding_of_rendered_text(tok, renderer: Renderer, messages) -> list[int]:
    text = "".join(p.text for p in renderer.pieces(messages))
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", ["llama2", "chatml", "llama3"])
def test_same_tokens_as_the_tokenizer_on_the_whole_string(tok_with, template):
    tok = tok_with(template)
    clean = [m for m in MESSAGES if m.content != NASTY]
    r = Renderer(tok, template)
    assert r.encode(clean).ids.tolist() == _hf_encoding_of_rendered_text(tok, r, clean)


def test_metaspace_prepend_first_sections(tmp_path):
    """A Metaspace(prepend_scheme="first") tokenizer adds no "▁" after a special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tk.decoder = decoders.Metaspace(prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet
    )
    tk.train_from_iterator([" ".join(m.content for m in MESSAGES)] * 5, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    clean = [m for m in MESSAGES if m.content != NASTY]
    r = Renderer(tok, "llama2")
    ids = r.encode(clean).ids.tolist()
    assert ids == _hf_encoding_of_rendered_text(tok, r, clean)
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<s>", "["]
