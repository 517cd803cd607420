"""Data-parallel eval under torchrun: each rank a shard, rank 0 merges and reports."""

from __future__ import annotations

import json

import pytest

from natscale.config.eval import EvalConfig
from natscale.eval.run import run_eval
from tests.mp.harness import assert_ok, run_distributed

from .conftest import read_jsonl, scripted_fields, write_config


@pytest.mark.multiproc
def test_two_ranks_equal_one_process(tmp_path):
    cfg = write_config(tmp_path / "eval.yaml", **scripted_fields(tmp_path / "dp", limit=150))
    result = run_distributed(
        ["eval", str(cfg), "--no-progress"], launcher="torchrun", log_dir=tmp_path / "logs"
    )
    assert_ok(result)
    out = tmp_path / "dp"
    assert sorted(p.name for p in out.iterdir()) == ["episodes.jsonl", "run.json", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["complete"] and summary["episodes"] == 150
    single = run_eval(EvalConfig.model_validate(scripted_fields(tmp_path / "one", limit=150)))
    assert summary["metrics"] == single["metrics"] and summary["failures"] == single["failures"]
    key = lambda e: (e["id"], e["sample"])  # noqa: E731
    dp = sorted(read_jsonl(out / "episodes.jsonl"), key=key)
    one = sorted(read_jsonl(tmp_path / "one" / "episodes.jsonl"), key=key)
    assert dp == one
