"""Checkpoint bookkeeping and metrics helpers (no process group needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from natscale.train.checkpoint import _prune, _write_latest, read_latest
from natscale.train.metrics import FlopsModel, clean, read_metrics, truncate_after


def test_latest_names_only_a_complete_tag(tmp_path: Path):
    assert read_latest(tmp_path) is None
    (tmp_path / "global_step4").mkdir()
    _write_latest(tmp_path, "global_step4")
    assert read_latest(tmp_path) == "global_step4"
    _write_latest(tmp_path, "global_step8")  # the tag directory is missing: not a checkpoint
    assert read_latest(tmp_path) is None
    assert not list(tmp_path.glob(".latest.*"))


def test_prune_keeps_the_newest(tmp_path: Path):
    for step in (2, 4, 10, 12, 6):
        (tmp_path / f"global_step{step}").mkdir()
    (tmp_path / "other").mkdir()
    assert sorted(_prune(tmp_path, 2, "global_step12")) == [
        "global_step2",
        "global_step4",
        "global_step6",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step10", "global_step12", "other"]


def test_metrics_truncate_and_clean(tmp_path: Path):
    lines = [
        json.dumps(clean({"step": s, "loss": math.nan if s == 2 else 1.0, "x": {"y": math.inf}}))
        for s in (1, 2, 3)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    truncate_after(tmp_path / "metrics.jsonl", 2)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] is None and records[0]["x"]["y"] is None


def test_flops_model_of_the_tiny_llama():
    from transformers import AutoConfig, AutoModelForCausalLM

    root = Path(__file__).resolve().parents[2]
    config = AutoConfig.from_pretrained(root / "examples" / "models" / "tiny-llama")
    model = AutoModelForCausalLM.from_config(config)
    flops = FlopsModel.from_model(model, config)
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    per_layer = (
        h * (config.num_attention_heads * config.head_dim) * 2
        + 2 * h * kv
        + 3 * h * config.intermediate_size
        + 2 * h
    )
    assert flops.body_params == layers * per_layer + h  # + the final norm
    assert flops.attn_dim == config.num_attention_heads * config.head_dim
    got = flops.step_flops(nonpad=10, trained=4, sum_sq_segment_len=50)
    assert got == 6 * flops.body_params * 10 + 6 * h * v * 4 + 6 * layers * flops.attn_dim * 50
    assert sum(p.numel() for p in model.parameters()) == flops.body_params + 2 * h * v
