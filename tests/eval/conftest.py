"""Fixtures for the eval tests: configs over the bundled data, a tiny random HF model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DATA = EXAMPLES / "math_react"
TOKENIZER = EXAMPLES / "tokenizer"


def write_config(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def scripted_fields(out: Path, **extra) -> dict:
    fields = {
        "backend": "scripted",
        "output": str(out),
        "questions": [str(DATA / "questions.jsonl")],
        "task": "math",
        "scripted": {"trajectories": [str(DATA / "trajectories.json")]},
        "prompt": {"file": str(DATA / "prompt.json")},
    }
    fields.update(extra)
    return fields


def bundled_by_id() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for t in json.loads((DATA / "trajectories.json").read_text()):
        out.setdefault(t["id"], []).append(t)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_tiny_model(out: Path, *, seed: int = 0) -> Path:
    """A random tiny Llama (examples/models/tiny-llama) saved with the bundled tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((EXAMPLES / "models" / "tiny-llama" / "config.json").read_text())
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures",)})
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
