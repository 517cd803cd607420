"""Checkpoint tensor names against the config's model: wrapper prefixes, tied weights, mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from natscale.checkpoint.zero_tensors import LazyTensor
from natscale.checkpoint.zero_to_hf import match_to_model
from natscale.convert.errors import ConvertError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"


def checkpoint_like(name: str, prefix: str = "") -> tuple[dict[str, LazyTensor], object]:
    """Lazy tensors named as DeepSpeed would save the model's parameters (tied ones once)."""
    config = AutoConfig.from_pretrained(EXAMPLES / name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors = {
        prefix + n: LazyTensor(p.shape, torch.float32, eager=torch.zeros(p.shape))
        for n, p in model.named_parameters()  # remove_duplicate=True: tied weights once
    }
    return tensors, config


def test_plain_names_map_one_to_one():
    tensors, config = checkpoint_like("tiny-llama")
    mapping, notes = match_to_model(tensors, config, Path("config.json"))
    assert mapping == {n: n for n in tensors} and not notes
    assert "lm_head.weight" in mapping


def test_tied_model_keeps_the_embedding_only():
    tensors, config = checkpoint_like("tiny-llama-tied")
    mapping, _ = match_to_model(tensors, config, Path("config.json"))
    assert "lm_head.weight" not in mapping and "model.embed_tokens.weight" in mapping


def test_wrapper_prefix_is_stripped_and_reported():
    tensors, config = checkpoint_like("tiny-llama", prefix="module.")
    mapping, notes = match_to_model(tensors, config, Path("config.json"))
    assert mapping["model.norm.weight"] == "module.model.norm.weight"
    assert notes == ["stripped wrapper prefix 'module.' from parameter names"]


def test_untied_training_with_a_tied_config_is_refused():
    tensors, _ = checkpoint_like("tiny-llama")
    tied = AutoConfig.from_pretrained(EXAMPLES / "tiny-llama-tied")
    with pytest.raises(ConvertError, match=r"ties lm_head\.weight -> model\.embed_tokens\.weight"):
        match_to_model(tensors, tied, Path("config.json"))


def test_missing_and_unexpected_names_are_listed():
    tensors, config = checkpoint_like("tiny-llama")
    tensors["extra.head.weight"] = tensors.pop("model.norm.weight")
    with pytest.raises(ConvertError, match=r"1 missing.*model.norm.weight.*1 unexpected.*extra"):
        match_to_model(tensors, config, Path("config.json"))
