"""Shared fixtures for the data-pipeline tests: the example tokenizer and data, small records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .nat_test_data import NAT_TRAJ, PROMPT, QUESTION, REPO, write_json, write_jsonl

EXAMPLE_TOKENIZER = REPO / "examples" / "tokenizer"
EXAMPLE_DATA = REPO / "examples" / "math_react"


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    assert EXAMPLE_TOKENIZER.is_dir(), f"{EXAMPLE_TOKENIZER} is missing"
    return EXAMPLE_TOKENIZER


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from natscale.data.render import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def example_data() -> Path:
    assert (EXAMPLE_DATA / "trajectories.json").is_file(), f"{EXAMPLE_DATA} is missing"
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
