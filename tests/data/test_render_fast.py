"""The encoder's fast path (tokens located from vocabulary lengths, no offsets) gives exactly the
ids and train masks of the offsets path, on the example data, with every template, in
``paper_compat`` mode and on text that forces the fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natscale.config.prepare import StrategyConfig
from natscale.data import nat
from natscale.data.formats import load_trajectories
from natscale.data.render import Message, Renderer, add_missing_tokens, load_tokenizer
from natscale.data.render.batch import render_range
from natscale.data.render.encode import Encoded, Piece, PieceEncoder, char_lengths

from .test_render import CHATML_JINJA, LLAMA2_JINJA, MESSAGES

# text the vocabulary lengths cannot place: byte-fallback pieces (emoji, CJK), combining marks
ODD = "Observation: café 🙂 日本語 e\u0301 ▁▁ tab\there  double  space\n"


def offsets_renderer(renderer: Renderer) -> Renderer:
    """The same renderer, its encoder forced onto the offsets path (the reference)."""
    import copy

    ref = copy.copy(renderer)
    ref.encoder = copy.copy(renderer.encoder)
    ref.encoder._char_len = None
    return ref


def same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        if isinstance(x, Encoded):
            assert np.array_equal(x.ids, y.ids), k
            assert np.array_equal(x.mask, y.mask), k
        else:
            assert x == y, k


@pytest.fixture(scope="module")
def example_examples(example_data):
    trajs = load_trajectories(
        example_data / "trajectories.json",
        "nat",
        questions=example_data / "questions.jsonl",
        prompt=example_data / "prompt.json",
    )
    examples, _ = nat.select(trajs, StrategyConfig())
    return examples


def test_the_example_tokenizer_takes_the_fast_path(tokenizer):
    enc = PieceEncoder(tokenizer)
    assert enc._char_len is not None
    assert enc._char_len[tokenizer.convert_tokens_to_ids("▁the")] == 4
    # byte-fallback and special tokens are never placed by length
    assert enc._char_len[tokenizer.convert_tokens_to_ids("<0x41>")] > 10**6
    assert enc._char_len[tokenizer.eos_token_id] > 10**6


@pytest.mark.parametrize("paper_compat", [False, True])
def test_example_data_renders_identically(tokenizer, example_examples, paper_compat):
    fast = Renderer(tokenizer, "llama2", paper_compat=paper_compat)
    ref = offsets_renderer(fast)
    got = render_range(fast, example_examples, "turn", None)
    want = render_range(ref, example_examples, "turn", None)
    same(got, want)
    assert sum(int(e.mask.sum()) for e in got) > 0


@pytest.mark.parametrize("template", ["llama2", "chatml", "llama3", "hf"])
def test_every_template_with_odd_text(tokenizer_copy, template):
    tok = load_tokenizer(tokenizer_copy)
    if template == "hf":
        add_missing_tokens(tok, "chatml")
        tok.chat_template = CHATML_JINJA
    else:
        add_missing_tokens(tok, template)
    fast = Renderer(tok, template)
    ref = offsets_renderer(fast)
    variants = [
        MESSAGES,
        [*MESSAGES[:3], Message("assistant", ODD, True), Message("observation", ODD)],
        [Message("user", " leading space"), Message("assistant", "  both  ", True)],
        [Message("user", "q"), Message("assistant", "", True), Message("assistant", "x", True)],
    ]
    for msgs in variants:
        a, b = fast.encoder.encode_batch([fast.pieces(msgs)])[0], ref.encode(msgs)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize(
    "trained",
    [(1,), (2,), (1, 3), (0, 2, 4), (4,)],
)
def test_trained_parts_inside_a_run(tokenizer, trained):
    """Trained text starting and ending inside a run (between untrained text), placed by the
    vocabulary lengths: the same tokens are trained as with offsets."""
    texts = ["Question: what is", " 12 * 3", "? Thought: ", "multiply them", ".\n"]
    pieces = [Piece("<s>", False, True)]
    pieces += [Piece(t, k in trained) for k, t in enumerate(texts)]
    pieces.append(Piece("</s>", False, True))
    enc, ref = PieceEncoder(tokenizer), PieceEncoder(tokenizer)
    ref._char_len = None
    a, b = enc.encode(pieces), ref.encode(pieces)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)
    assert a.mask.any() and not a.mask[-1]
    # the fast path placed this run: its tokens' lengths add up to the text's
    run = a.ids[1:-1]
    assert int(enc._char_len[run].sum()) == len("".join(texts))


def test_encode_batch_of_nothing_is_nothing(tokenizer):
    """One result per piece list: none for none (not one empty array from ``np.split``)."""
    enc = PieceEncoder(tokenizer)
    assert enc.encode_batch([]) == []
    two = enc.encode_batch([[Piece("a", True)], [Piece("b c", False)]])
    assert len(two) == 2 and all(e.ids.size for e in two)


def test_a_first_run_with_a_prepended_meta_space_falls_back(tokenizer):
    """No special token first: the tokenizer prepends "▁" (one more character than the text), so
    the run is placed with offsets."""
    enc = PieceEncoder(tokenizer)
    ref = PieceEncoder(tokenizer)
    ref._char_len = None
    pieces = [Piece("Question: two plus two?", False), Piece(" Four.", True), Piece("\n", False)]
    a, b = enc.encode(pieces), ref.encode(pieces)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)
    assert a.mask.any()


def test_runs_the_vocabulary_cannot_place_are_encoded_once_with_offsets(tokenizer, monkeypatch):
    """Once most non-ASCII trained runs needed the offsets (byte-fallback pieces), such runs are
    encoded with offsets at once, not twice; ASCII runs keep the fast path; the same result."""
    from natscale.data.render import encode

    calls: list[tuple[bool, list[str]]] = []
    real = encode._encode

    def spy(tk, texts, *, offsets):
        calls.append((offsets, list(texts)))
        return real(tk, texts, offsets=offsets)

    monkeypatch.setattr(encode, "_encode", spy)
    enc, ref = PieceEncoder(tokenizer), PieceEncoder(tokenizer)
    ref._char_len = None

    def batch(k: int) -> list[list[Piece]]:
        return [
            [
                Piece("<s>", False, True),
                Piece(f"Question {k}: "),
                Piece(ODD * (j + 1), True),
                Piece("</s>", False, True),
                Piece(f" plain {k} {j}", True),
            ]
            for j in range(3)
        ]

    for k in range(3):
        pieces = batch(k)
        want = ref.encode_batch(pieces)
        calls.clear()
        got = enc.encode_batch(pieces)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)
        wide = [t for offsets, texts in calls if offsets for t in texts]
        assert len(wide) == 3 and all(not t.isascii() for t in wide)  # once each
        if k:  # learnt: no run is encoded twice
            narrow = [t for offsets, texts in calls if not offsets for t in texts]
            assert narrow and all(t.isascii() for t in narrow)
    assert enc._wide[1] == 3 and enc._wide[0] == 0  # counted on the first batch only


def _byte_level_tokenizer(tmp_path, *, trim_offsets: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([" ".join(m.content for m in MESSAGES)] * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>").save_pretrained(
        tmp_path
    )
    return load_tokenizer(tmp_path)


@pytest.mark.parametrize("trim_offsets", [False, True])
def test_byte_level_tokenizer(tmp_path, trim_offsets):
    tok = _byte_level_tokenizer(tmp_path, trim_offsets=trim_offsets)
    fast = Renderer(tok, "chatml")
    # trimmed offsets are not the vocabulary lengths: such a tokenizer always uses offsets
    assert (fast.encoder._char_len is None) == trim_offsets
    ref = offsets_renderer(fast)
    for msgs in (MESSAGES, [*MESSAGES[:3], Message("assistant", ODD, True)]):
        a, b = fast.encode(msgs), ref.encode(msgs)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)


def test_tokenizers_that_change_characters_use_offsets(tokenizer):
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    assert char_lengths(spec) is not None
    for change in (
        {"normalizer": {"type": "NFKC"}},
        {"pre_tokenizer": {"type": "Whitespace"}},
        {"pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed"}},
        {"post_processor": {"type": "ByteLevel", "trim_offsets": True}},
        {"model": {**spec["model"], "continuing_subword_prefix": "##"}},
    ):
        assert char_lengths({**spec, **change}) is None, change


def _paper_reference(tok, segs) -> tuple[list[int], list[bool]]:
    """Each segment's joined text through the tokenizer on its own, a trained </s> appended
    when the last token is not one (the paper's code, on strings)."""
    ids, mask = [], []
    for pieces, train in segs:
        part = tok("".join(p.text for p in pieces), add_special_tokens=False)["input_ids"]
        ids += part
        mask += [train] * len(part)
    if not ids or ids[-1] != tok.eos_token_id:
        ids.append(tok.eos_token_id)
        mask.append(True)
    return ids, mask


def test_paper_compat_batch_matches_segment_by_segment(tokenizer, example_examples):
    """Many conversations' segments in one tokenizer call give each conversation's tokens as
    tokenising its segments one by one does; an empty conversation is its trained </s>."""
    from natscale.data.render.messages import trajectory_messages
    from natscale.data.render.paper import encode_paper_flat, segments

    r = Renderer(tokenizer, "llama2", paper_compat=True)
    convs = [segments(trajectory_messages(ex.traj, ex.query)) for ex in example_examples[:300]]
    convs.insert(1, segments([]))
    # ends with the template's own </s>: nothing appended
    convs.append(segments([Message("user", "q"), Message("assistant", "a", True)]))
    convs.append(segments([]))
    ids, mask, lengths = encode_paper_flat(r.encoder, convs, r.eos_id)
    assert ids.dtype == np.int32 and mask.dtype == bool and lengths.sum() == len(ids)
    cuts = np.cumsum(lengths)[:-1]
    for k, (got_ids, got_mask, segs) in enumerate(
        zip(np.split(ids, cuts), np.split(mask, cuts), convs, strict=True)
    ):
        want_ids, want_mask = _paper_reference(tokenizer, segs)
        assert got_ids.tolist() == want_ids, k
        assert got_mask.tolist() == want_mask, k
    assert lengths[1] == 1 and mask[lengths[0]]  # the empty one: only its trained </s>
    assert ids[-2] == r.eos_id and lengths[-2] == len(_paper_reference(tokenizer, convs[-2])[0])


def test_hf_template_layout_is_rendered_once_and_content_still_checked(tokenizer_copy):
    """The template text around the messages is rendered once per layout; every conversation
    is still checked against its own rendering, so content the template rewrites is refused
    even when its layout was seen before."""
    from natscale.data.render import TemplateError

    tok = load_tokenizer(tokenizer_copy)
    add_missing_tokens(tok, "chatml")
    # rewrites a content holding SECRET (a content-dependent branch)
    tok.chat_template = CHATML_JINJA.replace(
        "message['content']",
        "('[hidden]' if 'SECRET' in message['content'] else message['content'])",
    )
    r = Renderer(tok, "hf")

    def skeletons() -> tuple[int, int]:
        """(conversation layouts, generation-prompt layouts) rendered so far"""
        prompts = sum(key[0] for key in r.template._skeletons)  # key[0]: add_generation_prompt
        return len(r.template._skeletons) - prompts, prompts

    first = r.encode(MESSAGES)
    assert skeletons() == (1, 2)  # and the prompt before each of the two trained turns
    other = [*MESSAGES[:-1], Message("observation", "Observation: something else")]
    again = r.encode(other)
    assert skeletons() == (1, 2)  # same layout: nothing rendered again
    fresh = Renderer(tok, "hf").encode(other)
    assert np.array_equal(again.ids, fresh.ids) and np.array_equal(again.mask, fresh.mask)
    assert not np.array_equal(first.ids, again.ids)
    # an untrained message is shown as the template shows it; a trained one must be kept
    hidden = r.encode([*MESSAGES[:-1], Message("observation", "SECRET")])
    assert "[hidden]" in tok.decode(hidden.ids) and "SECRET" not in tok.decode(hidden.ids)
    with pytest.raises(TemplateError, match="changes the text of message 3"):
        r.encode([*MESSAGES[:3], Message("assistant", "SECRET", True), *MESSAGES[4:]])
    # another layout (one message fewer) gets its own skeleton; its prompts are known
    r.encode(MESSAGES[:-1])
    assert skeletons() == (2, 2)


def _hf_pair(tokenizer_copy, jinja: str):
    tok = load_tokenizer(tokenizer_copy)
    tok.chat_template = jinja
    if "<|im_end|>" in jinja:  # its turns end with it: a token (else no turn would end)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast, ref = Renderer(tok, "hf"), Renderer(tok, "hf")
    ref.template._direct = None  # apply_chat_template for every conversation
    return fast, ref


CONVERSATIONS = [
    MESSAGES,
    MESSAGES[:-1],
    [Message("user", "  padded  "), Message("assistant", " a </s> [INST] b ", True)],
]


@pytest.mark.parametrize("jinja", [LLAMA2_JINJA, CHATML_JINJA])
def test_hf_direct_render_gives_what_apply_chat_template_gives(tokenizer_copy, jinja):
    """The real-content render bypasses apply_chat_template's conversions (special-token
    variables, trim included) and gives exactly its result."""
    fast, ref = _hf_pair(tokenizer_copy, jinja)
    for conv in CONVERSATIONS * 2:
        assert fast.pieces(conv) == ref.pieces(conv)
        a, b = fast.encode(conv), ref.encode(conv)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)
    layouts = {fast.template._layout(c, False, None) for c in CONVERSATIONS}
    assert fast.template._direct is not None and fast.template._checked == layouts


def test_hf_direct_render_falls_back_when_it_differs(tokenizer_copy):
    """A direct render that differs from apply_chat_template (here: without the special-token
    variables, so no bos/eos) is caught at its layout's first render and never used again."""
    fast, ref = _hf_pair(tokenizer_copy, LLAMA2_JINJA)
    template, _variables = fast.template._direct
    fast.template._direct = (template, {})
    for conv in CONVERSATIONS:
        assert fast.pieces(conv) == ref.pieces(conv)
    assert fast.template._direct is None
    # a template set after the renderer was made is rendered as set, not as compiled before
    fast2, ref2 = _hf_pair(tokenizer_copy, LLAMA2_JINJA)
    fast2.pieces(MESSAGES)
    fast2.template.tokenizer.chat_template = CHATML_JINJA
    ref2.template.tokenizer.chat_template = CHATML_JINJA
    assert fast2.pieces(MESSAGES) == ref2.pieces(MESSAGES)


def test_hf_direct_render_pickles_and_keeps_the_sandbox(tokenizer_copy):
    """A renderer sent to a spawned worker compiles the template again; the memoised sandbox
    check still refuses what jinja's sandbox refuses, every time."""
    import pickle

    from natscale.data.render import TemplateError

    fast, ref = _hf_pair(tokenizer_copy, LLAMA2_JINJA)
    fast.pieces(MESSAGES)
    again = pickle.loads(pickle.dumps(fast))
    assert again.template._direct is not None
    for conv in CONVERSATIONS:
        assert again.pieces(conv) == ref.pieces(conv)
    sneaky = CHATML_JINJA.replace("message['content']", "message['content'].__class__")
    bad, _ = _hf_pair(tokenizer_copy, sneaky)
    for _ in range(2):
        with pytest.raises(TemplateError, match="chat template failed"):
            bad.pieces(MESSAGES)
    assert bad.template._direct is not None  # refused by both: the direct render stays


@pytest.mark.parametrize("setting", [None, "true"])
def test_workers_leave_the_tokenizer_thread_setting_as_it_was(
    tokenizer, example_examples, monkeypatch, setting
):
    """num_proc 2 renders what one process renders (default and paper_compat), and
    TOKENIZERS_PARALLELISM is off only in the workers: this process's setting is kept."""
    import os

    from natscale.data.render.batch import render_examples

    if setting is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", setting)
    examples = example_examples[:200]
    for paper_compat in (False, True):
        r = Renderer(tokenizer, "llama2", paper_compat=paper_compat)
        two = render_examples(r, examples, num_proc=2)
        assert os.environ.get("TOKENIZERS_PARALLELISM") == setting
        same(two, render_examples(r, examples, num_proc=1))
