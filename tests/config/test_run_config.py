"""The run config schema, ds_config filling, and every shipped config (ds_configs/, examples/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from natscale.config.ds_config import (
    check_with_deepspeed,
    fill_ds_config,
    load_ds_config,
    resolve_ds_config_path,
    shipped_ds_configs,
)
from natscale.config.loader import ConfigError, load_config
from natscale.config.run import RunConfig

REPO = Path(__file__).resolve().parents[2]
DS_CONFIGS = sorted(shipped_ds_configs().values())
RUN_CONFIGS = sorted((REPO / "examples" / "configs").glob("train*.yaml"))


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


MINIMAL = {"output_dir": "runs/x", "model": {"config": "m/config.json"}, "data": {"path": "d"}}


def test_minimal_config_defaults_and_overrides(tmp_path: Path):
    run = load_config(
        _write(tmp_path, MINIMAL), RunConfig, ["train.lr=2e-5", "train.loss_norm=sequence"]
    )
    assert run.train.lr == 2e-5 and run.train.loss_norm == "sequence"
    assert run.train.precision == "bf16" and run.deepspeed.config == "ds_configs/zero3_bf16.json"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.loss_norm=mean", "train.loss_norm: Input should be 'token' or 'sequence'"),
        ("train.precision=fp16", "train.precision: Input should be 'bf16' or 'fp32'"),
        ("train.lr_rate=1", "train.lr_rate: unknown key"),
        ("train.grad_accum=0", "train.grad_accum: Input should be greater than or equal to 1"),
        ("model.path=somewhere", "set exactly one of model.path"),
        # these passed every check, then crashed every rank (numpy's rng, torch's Adam)
        ("train.seed=-1", "train.seed: Input should be greater than or equal to 0"),
        ("train.adam_betas=[1.5, 0.9]", "train.adam_betas.0: Input should be less than 1"),
    ],
)
def test_errors_name_the_key_and_allowed_values(tmp_path: Path, override: str, needle: str):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, MINIMAL), RunConfig, [override])
    assert needle in str(exc.value)


def _run(**train) -> RunConfig:
    return RunConfig.model_validate({**MINIMAL, "train": train})


def test_fill_auto_values_from_the_run():
    run = _run(
        lr=3e-4, grad_accum=4, precision="fp32", grad_clip=0.5, weight_decay=0.1, adam_eps=1e-6
    )
    ds = fill_ds_config(
        load_ds_config("ds_configs/zero3_bf16.json"), run, world_size=8, hidden_size=64
    )
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 4
    assert ds["bf16"]["enabled"] is False and ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"] == {
        "lr": 3e-4,
        "betas": [0.9, 0.95],
        "eps": 1e-6,
        "weight_decay": 0.1,
    }
    zero = ds["zero_optimization"]
    assert zero["reduce_bucket_size"] == 64 * 64
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
    assert zero["stage3_param_persistence_threshold"] == 10 * 64


def test_fill_rejects_conflicts_and_a_scheduler():
    base = load_ds_config("ds_configs/zero3_bf16.json")
    with pytest.raises(
        ConfigError, match=r"gradient_clipping is 2\.0 but the run config says 1\.0"
    ):
        fill_ds_config({**base, "gradient_clipping": 2.0}, _run(), world_size=1, hidden_size=8)
    with pytest.raises(ConfigError, match="fp16 is not supported"):
        fill_ds_config({**base, "fp16": {"enabled": True}}, _run(), world_size=1, hidden_size=8)
    with pytest.raises(ConfigError, match="remove its 'scheduler' block"):
        fill_ds_config(
            {**base, "scheduler": {"type": "WarmupLR"}}, _run(), world_size=1, hidden_size=8
        )
    with pytest.raises(
        ConfigError, match=r"no rule to fill 'auto' at \['zero_optimization.sub_group_size'\]"
    ):
        bad = json.loads(json.dumps(base))
        bad["zero_optimization"]["sub_group_size"] = "auto"
        fill_ds_config(bad, _run(), world_size=1, hidden_size=8)


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_every_ds_config_passes_deepspeed(path: Path, precision: str):
    ds = fill_ds_config(
        load_ds_config(path), _run(precision=precision), world_size=1, hidden_size=64
    )
    check_with_deepspeed(ds, str(path))


def test_ds_configs_exist():
    assert {p.name for p in DS_CONFIGS} >= {
        "zero3_bf16.json",
        "zero3_cpu.json",
        "zero3_offload.json",
        "zero2_bf16.json",
    }


def test_shipped_ds_config_resolves_by_its_documented_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # no ds_configs/ here: the packaged copy answers
    path = resolve_ds_config_path("ds_configs/zero3_cpu.json")
    assert (
        path.is_file()
        and path.parent.name == "ds_configs"
        and path.parent.parent.name == "natscale"
    )
    assert load_ds_config("ds_configs/zero3_cpu.json") == json.loads(path.read_text())
    own = tmp_path / "ds_configs" / "zero3_cpu.json"  # a file of that path here wins
    own.parent.mkdir()
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert load_ds_config("ds_configs/zero3_cpu.json") == {"zero_optimization": {"stage": 2}}
    with pytest.raises(ConfigError, match=r"nope\.json not found.*ds_configs/zero3_cpu"):
        load_ds_config("ds_configs/nope.json")
    with pytest.raises(ConfigError, match=r"other/zero3_cpu\.json not found"):
        load_ds_config("other/zero3_cpu.json")  # only ds_configs/ names the shipped folder


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b'{"a": "\xff"}', "not UTF-8 text"), (b'{"a": ', "not valid JSON"), (b"[1]", "JSON object")],
)
def test_a_ds_config_that_cannot_be_read_is_a_config_error(tmp_path, content, needle):
    # a file that is not UTF-8 raised UnicodeDecodeError, a traceback in train and launch
    path = tmp_path / "ds.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as err:
        load_ds_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_example_run_config_validates(path: Path):
    run = load_config(path, RunConfig)
    ds = fill_ds_config(load_ds_config(run.deepspeed.config), run, world_size=2, hidden_size=64)
    assert ds["zero_optimization"]["stage"] == 3


def test_a_negative_eval_seed_is_refused_before_any_episode():
    """It crashed in the bootstrap after every episode had run, and then on every --resume."""
    from pydantic import ValidationError

    from natscale.config.eval import SamplingConfig

    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        SamplingConfig(seed=-1)
