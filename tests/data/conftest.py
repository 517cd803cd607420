"""Shared fixtures for the data-pipeline tests: the example tokenizer and data, small records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nat_test_data import NAT_TRAJ, PROMPT, QUESTION, write_json, write_jsonl

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TOKENIZER = REPO / "examples" / "tokenizer"
EXAMPLE_DATA = REPO / "examples" / "math_react"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    if EXAMPLE_TOKENIZER.is_dir():
        return EXAMPLE_TOKENIZER
    # TEMPORARY until examples/tokenizer lands on main
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    tr = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], initial_alphabet=alphabet
    )
    tk.train_from_iterator(
        ["Thought: Action: calculate[2 + 4] Observation: Question: finish"] * 20, tr
    )
    f = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    out = tmp_path_factory.mktemp("tok")
    f.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from natscale.data.render import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def example_data() -> Path:
    if not (EXAMPLE_DATA / "trajectories.json").is_file():
        pytest.skip("examples/math_react is not in this checkout")
    return EXAMPLE_DATA


@pytest.fixture
def tokenizer_copy(tokenizer_dir, tmp_path):
    """A writable copy of the example tokenizer directory."""
    dst = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, dst)
    return dst


@pytest.fixture
def nat_files(tmp_path):
    """(trajectories.json, questions.jsonl, prompt.json) with one success and one failure."""
    fail = json.loads(json.dumps(NAT_TRAJ))
    fail["info"].update(reward=False, pred="7")
    fail["conversations"][2]["content"] = "Thought: done.\nAction: finish[7]"
    traj = write_json(tmp_path / "trajectories.json", [NAT_TRAJ, fail])
    questions = write_jsonl(tmp_path / "questions.jsonl", [QUESTION])
    prompt = write_json(tmp_path / "prompt.json", PROMPT)
    return traj, questions, prompt
