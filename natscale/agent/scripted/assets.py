"""The tiny tokenizer and model configs bundled with the example data (``examples/``).

* Tokenizer: a SentencePiece BPE model trained on the example data's text with Llama-2's settings
  (identity normalisation, dummy prefix, split digits, byte fallback so any UTF-8 encodes), ids
  ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3, bytes ``<0x00>``..``<0xFF>``=4..259, then the
  learned pieces. It is converted to a Hugging Face fast ``LlamaTokenizer`` (``tokenizer.json``)
  and saved with the ``.model`` beside it. No chat template: the data pipeline brings its own.
* Model configs: a 2-layer Llama with ``vocab_size`` equal to the tokenizer size (2048, already a
  multiple of 8, so no padding rows) and the tokenizer's bos/eos/pad ids; untied and tied heads.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from natscale.agent.scripted.dataset import TEMPLATES, SyntheticSet

VOCAB_SIZE = 2048
MODEL_MAX_LENGTH = 4096  # the paper's model_max_length
SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Keys that from_pretrained() records about *how* it loaded; they do not belong in a shipped config.
_LOAD_KEYS = ("is_local", "local_files_only")

TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "use_cache": False,
}


def corpus_texts(data: SyntheticSet) -> list[str]:
    """Every text a model sees in this task: instruction, acknowledgement, each question in all
    three templates, and every turn of every trajectory."""
    texts = [data.prompt["instruction"], data.prompt["acknowledgement"]]
    for q in data.questions:
        texts += [template.format(question=q["question"]) for template in TEMPLATES.values()]
    for t in data.trajectories:
        texts += [m["content"] for m in t["conversations"]]
    return texts


# Llama-2's SentencePiece settings: BPE, byte fallback, digits split, no normalisation, a
# leading "▁", <unk> <s> </s> as ids 0-2
LLAMA_SPM = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": True,
    "allow_whitespace_only_pieces": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "max_sentence_length": 100_000,
    "minloglevel": 2,
}


def train_sentencepiece(
    texts: Iterable[str], vocab_size: int = VOCAB_SIZE, **options: Any
) -> bytes:
    """Train a BPE model with Llama-2's settings; returns the serialised ``.model``. By default
    deterministic (one thread, fixed seed), every character covered and ``<pad>`` as id 3;
    ``options`` are more or other ``SentencePieceTrainer.train`` arguments (None: not passed)."""
    import sentencepiece as spm

    settings = {"character_coverage": 1.0, "pad_id": 3, "pad_piece": "<pad>", "num_threads": 1}
    buffer = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buffer,
        vocab_size=vocab_size,
        **{k: v for k, v in {**LLAMA_SPM, **settings, **options}.items() if v is not None},
    )
    return buffer.getvalue()


def write_tokenizer(model_proto: bytes, out_dir: str | os.PathLike) -> Path:
    """Convert a SentencePiece model to a fast HF tokenizer directory (files replaced atomically)."""
    from transformers import LlamaTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer.") as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.mkdir()
        (src / "tokenizer.model").write_bytes(model_proto)
        # Llama-2 behaviour, stated explicitly (the converter's default depends on its inputs).
        tokenizer = LlamaTokenizer.from_pretrained(
            src,
            legacy=False,
            add_bos_token=True,
            add_eos_token=False,
            model_max_length=MODEL_MAX_LENGTH,
            **SPECIAL_TOKENS,
        )
        tokenizer.save_pretrained(dst)
        config_path = dst / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key in _LOAD_KEYS:
            config.pop(key, None)
        config.update(
            add_bos_token=True, add_eos_token=False
        )  # persist what the post-processor does
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        shutil.copyfile(src / "tokenizer.model", dst / "tokenizer.model")
        for name in TOKENIZER_FILES:
            os.replace(dst / name, out / name)
    return out


def tiny_llama_config(tokenizer, *, tie_word_embeddings: bool):
    """A ``LlamaConfig`` sized for tests, with the tokenizer's vocabulary size and special ids."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def write_model_configs(
    tokenizer_dir: str | os.PathLike, models_dir: str | os.PathLike
) -> list[Path]:
    """Write ``tiny-llama/config.json`` (untied) and ``tiny-llama-tied/config.json``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    paths = []
    for name, tied in (("tiny-llama", False), ("tiny-llama-tied", True)):
        target = Path(models_dir, name)
        tiny_llama_config(tokenizer, tie_word_embeddings=tied).save_pretrained(target)
        paths.append(target / "config.json")
    return paths
