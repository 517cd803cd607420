"""Real public agent data (issue 15): small records of the published shapes, end to end."""

from __future__ import annotations

import pytest

from natscale.config.prepare import PrepareConfig
from natscale.data.errors import DataError
from natscale.data.prepare import prepare

from .nat_test_data import write_jsonl

# AgentInstruct as published (THUDM/AgentInstruct): loss flags, no success field
AGENTINSTRUCT = {
    "id": "os_0",
    "conversations": [
        {"from": "human", "value": "You are an assistant that operates a shell.", "loss": False},
        {"from": "gpt", "value": "OK.", "loss": False},
        {"from": "human", "value": "How many files are in /etc?", "loss": False},
        {
            "from": "gpt",
            "value": "Think: count them.\n\nAct: bash\n\n```bash\nls /etc | wc -l\n```",
            "loss": True,
        },
        {"from": "human", "value": "The output of the OS:\n212", "loss": False},
        {"from": "gpt", "value": "Think: done.\n\nAct: answer(212)", "loss": True},
    ],
}


def _prepare_config(tokenizer_dir, tmp_path, sources, **sections) -> PrepareConfig:
    data = {
        "output": str(tmp_path / "out"),
        "sources": sources,
        "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        "pack": {"max_seq_len": 512},
        **sections,
    }
    return PrepareConfig.model_validate(data)


# ---------------------------------------------------------------- item 1: SFT data


def test_sft_data_without_outcomes_names_the_outcome_mode(tokenizer_dir, tmp_path):
    path = write_jsonl(tmp_path / "ai.jsonl", [AGENTINSTRUCT])
    src = [{"format": "agentinstruct", "paths": [str(path)]}]
    cfg = _prepare_config(tokenizer_dir, tmp_path, src, strategy={"name": "vanilla"})
    with pytest.raises(DataError, match="has no success field") as exc:
        prepare(cfg, progress=False)
    assert "outcome.success: all" in str(exc.value) and "success: true" in str(exc.value)
    # skipping every record: the empty-dataset error says the same
    cfg = cfg.model_copy(update={"on_error": "skip"})
    with pytest.raises(DataError, match="no example left") as exc:
        prepare(cfg, progress=False)
    assert "outcome.success: all" in str(exc.value)


@pytest.mark.parametrize("how", ["outcome", "source"])
def test_sft_data_prepares_with_an_outcome_mode(tokenizer_dir, tmp_path, how):
    path = write_jsonl(tmp_path / "ai.jsonl", [AGENTINSTRUCT, {**AGENTINSTRUCT, "id": "os_1"}])
    src = {"format": "agentinstruct", "paths": [str(path)]}
    sections = {"strategy": {"name": "vanilla"}}
    if how == "outcome":
        sections["outcome"] = {"success": "all"}
    else:
        src["success"] = True
    result = prepare(_prepare_config(tokenizer_dir, tmp_path, [src], **sections), progress=False)
    assert result.stats["per_class"]["success"]["examples"] == 2


def test_a_source_of_failures(tokenizer_dir, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [AGENTINSTRUCT])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**AGENTINSTRUCT, "id": "os_9"}])
    sources = [
        {"format": "agentinstruct", "paths": [str(good)], "success": True},
        {"format": "agentinstruct", "paths": [str(bad)], "success": False},
    ]
    result = prepare(_prepare_config(tokenizer_dir, tmp_path, sources), progress=False)
    assert {k: v["examples"] for k, v in result.stats["per_class"].items()} == {
        "success": 1,
        "failure": 1,
    }
