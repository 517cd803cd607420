"""The bundled tokenizer and tiny model configs load offline and fit the example data."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TOKENIZER_DIR = EXAMPLES / "tokenizer"
MODEL_DIRS = [EXAMPLES / "models" / "tiny-llama", EXAMPLES / "models" / "tiny-llama-tied"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def texts():
    from natscale.agent.scripted.assets import corpus_texts
    from natscale.agent.scripted.dataset import SyntheticSet

    data_dir = EXAMPLES / "math_react"
    trajectories = json.loads((data_dir / "trajectories.json").read_text(encoding="utf-8"))
    lines = (data_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    prompt = json.loads((data_dir / "prompt.json").read_text(encoding="utf-8"))
    return corpus_texts(SyntheticSet([json.loads(x) for x in lines], trajectories, prompt))


def test_tokenizer_is_fast_with_llama_special_tokens(tokenizer):
    assert tokenizer.is_fast
    assert len(tokenizer) == 2048
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
    )
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id) == (0, 1)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 3)
    assert tokenizer.chat_template is None
    assert tokenizer("12")["input_ids"][0] == tokenizer.bos_token_id  # bos added, no eos
    assert tokenizer("12")["input_ids"][-1] != tokenizer.eos_token_id


def test_tokenizer_round_trips_all_example_text(tokenizer, texts):
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(encoded)
    mismatches = [t for t, d in zip(texts, decoded, strict=True) if t != d]
    assert not mismatches, mismatches[:3]
    # Byte fallback: text the tokenizer never saw still round-trips, with no <unk>.
    unseen = "日本語 😀 naïve — ∑ «quoted»\ttab"
    ids = tokenizer(unseen, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == unseen


def test_fast_tokenizer_matches_sentencepiece(tokenizer, texts):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_DIR / "tokenizer.model"))
    sample = [*texts[::50], "[INST] hi </s> <s>", "a  b\n\nc", "Zoë pays €12.50 for 4 × 3"]
    hf = tokenizer(sample, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert hf == sp.encode(sample)


def test_special_token_text_is_split_when_asked(tokenizer):
    text = "[INST] Observation: 12 </s><s><pad>"
    special = {0, 1, 2, 3}
    split = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not special & set(split)
    assert tokenizer.decode(split) == text
    default = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert default[-3:] == [2, 1, 3]  # without the flag, typed special tokens become specials
    # "[INST]" is no special token of this tokenizer: ordinary pieces either way.
    inst = tokenizer("[INST]", add_special_tokens=False)["input_ids"]
    assert (
        inst
        == tokenizer("[INST]", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    )


def test_regenerated_tokenizer_is_identical(tmp_path, texts):
    from natscale.agent.scripted.assets import TOKENIZER_FILES, train_sentencepiece, write_tokenizer

    out = write_tokenizer(train_sentencepiece(texts), tmp_path / "tok")
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: p.name)
def test_tiny_model_config_matches_tokenizer_and_runs(model_dir, tokenizer):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from natscale.agent.scripted.assets import tiny_llama_config

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    assert config.model_type == "llama"
    assert config.vocab_size == len(tokenizer) and config.vocab_size % 8 == 0
    assert config.bos_token_id == tokenizer.bos_token_id
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    tied = model_dir.name.endswith("-tied")
    assert config.tie_word_embeddings is tied
    expected = tiny_llama_config(tokenizer, tie_word_embeddings=tied).to_dict()
    actual = config.to_dict()
    for d in (expected, actual):
        d.pop("transformers_version", None)
        d.pop("_name_or_path", None)
    assert actual == expected

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    weights_shared = (
        model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    )
    assert weights_shared is tied
    ids = tokenizer("Thought: 4 × 3.\nAction: calculate[4 * 3]", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], config.vocab_size)
    assert torch.isfinite(out.loss)
