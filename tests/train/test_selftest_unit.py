"""natscale.train.selftest without processes: config loading errors, the verdict, the counts."""

from __future__ import annotations

import pytest

from natscale.cli.main import main
from natscale.train.selftest import (
    TINY_LLAMA,
    RankReport,
    SelftestOptions,
    count_params,
    deepspeed_config,
    load_model_config,
    verdict,
)


def _report(
    rank: int, losses: list[float], local: int, *, world: int = 2, stage: int = 3
) -> RankReport:
    return RankReport(
        rank=rank,
        world_size=world,
        local_rank=rank,
        hostname="h",
        backend="gloo",
        master_addr="127.0.0.1",
        zero_stage=stage,
        dtype="fp32",
        losses=losses,
        params_local=local,
        params_total=100,
        params_share=50,
        seconds=1.0,
    )


def test_verdict_passes_when_loss_falls_and_each_rank_holds_its_share():
    ok, line = verdict([_report(0, [6.0, 5.0], 50), _report(1, [6.2, 5.2], 50)])
    assert ok
    assert line.startswith("selftest: loss 6.100 -> 5.100 over 2 steps, world size 2 (gloo)")
    assert "partitioned: yes (50 of 100 on rank 0)" in line and line.endswith(": OK")


def test_verdict_fails_on_a_rank_whose_loss_did_not_fall():
    ok, line = verdict([_report(0, [6.0, 5.0], 50), _report(1, [6.0, 6.5], 50)])
    assert not ok and "loss did not fall on rank(s) [1]" in line


def test_verdict_fails_under_zero3_when_a_rank_holds_the_whole_model():
    ok, line = verdict([_report(0, [6.0, 5.0], 100), _report(1, [6.0, 5.0], 100)])
    assert not ok and "parameters not partitioned: [100, 100] held of 100" in line
    # under ZeRO-2 the parameters are replicated by design
    ok, line = verdict([_report(0, [6.0, 5.0], 100, stage=2), _report(1, [6.0, 5.0], 100, stage=2)])
    assert ok and "partitioned: no" in line


def test_count_params_without_zero3_is_the_whole_model_with_its_share():
    import torch

    model = torch.nn.Linear(3, 5)  # 15 + 5 elements
    assert count_params(model, world_size=2) == (20, 20, 8 + 3)


def test_deepspeed_config_partitions_every_parameter_under_stage3():
    cfg = deepspeed_config(SelftestOptions(zero_stage=3, bf16=True, lr=1e-3))
    assert cfg["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert cfg["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True}
    assert cfg["bf16"] == {"enabled": True}
    assert (
        "stage3_param_persistence_threshold"
        not in deepspeed_config(SelftestOptions(zero_stage=2))["zero_optimization"]
    )


def test_model_config_builtin_file_and_directory(tmp_path):
    import json

    assert load_model_config(None).hidden_size == TINY_LLAMA["hidden_size"]
    (tmp_path / "config.json").write_text(
        json.dumps({**TINY_LLAMA, "hidden_size": 32, "use_cache": True})
    )
    for path in (tmp_path, tmp_path / "config.json"):
        cfg = load_model_config(str(path))
        assert cfg.hidden_size == 32 and cfg.use_cache is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "does not exist"),
        ('{"model_type": "llama",\n "hidden_size": }', "line 2, column 17: invalid JSON"),
        ('{"hidden_size": 8}', "no 'model_type' key"),
        ('{"model_type": "llama", "vocab_size": "8"}', "Field 'vocab_size' expected int"),
    ],
)
def test_model_config_errors_name_the_file(tmp_path, text, expected):
    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=expected) as err:
        load_model_config(str(path))
    assert str(path) in str(err.value)


def test_selftest_command_rejects_a_bad_model_config_before_starting(tmp_path, capsys):
    assert main(["selftest", "--model-config", str(tmp_path / "missing")]) == 2
    assert "natscale selftest: --model-config" in capsys.readouterr().err


def test_a_model_class_without_sdpa_is_built_with_eager():
    from transformers import AutoConfig

    from natscale.train.selftest import build_model

    stage2 = deepspeed_config(SelftestOptions(zero_stage=2))  # no zero.Init: no process group
    fields = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    config = AutoConfig.for_model("gemma2", **fields, head_dim=8)
    model = build_model(config, stage2)  # sdpa: transformers' ValueError
    assert model.config._attn_implementation == "eager"
    llama = build_model(AutoConfig.for_model(**TINY_LLAMA), stage2)
    assert llama.config._attn_implementation == "sdpa"
