"""Faults caught before any process group starts: clear errors that name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from natscale.cli.main import main
from natscale.config.loader import load_config
from natscale.config.run import RunConfig
from natscale.train.preflight import PreflightError, check_run
from tests.train.train_fixtures import (
    VOCAB,
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)


@pytest.fixture
def setup(tmp_path: Path):
    save_rows(pack_greedy(make_segments(10, seed=0), 64), tmp_path / "data")
    write_model_config(tmp_path / "model")
    cfg = write_run_config(
        tmp_path / "run.yaml",
        data_dir=tmp_path / "data",
        model_config=tmp_path / "model",
        out=tmp_path / "out",
    )
    return tmp_path, cfg


def _check(cfg: Path, *overrides: str, resume: bool = False):
    return check_run(load_config(cfg, RunConfig, list(overrides)), resume=resume)


def _tokenizer(path: Path, words: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0]).save_pretrained(str(path))
    return path


def test_a_good_setup_passes(setup):
    _, cfg = setup
    checks = _check(cfg)
    assert checks.vocab_size == VOCAB and checks.tokenizer_dir is None
    assert "no tokenizer" in checks.notes[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{cfg}"],
        ["train", "--config", "{cfg}"],
        ["--local_rank=0", "train", "--config", "{cfg}"],  # deepspeed --module natscale.cli ...
    ],
)
def test_cli_fails_before_any_process_group(setup, capsys, argv):
    tmp, cfg = setup
    argv = [a.format(cfg=cfg) for a in argv]
    assert main([*argv, "--set", f"data.path={tmp / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert "is not a `natscale prepare` output directory" in err and "nowhere" in err
    assert not dist.is_initialized()


def test_cli_needs_a_config(capsys):
    assert main(["train"]) == 2
    assert "no run config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.config=/no/such/dir"], "model.config: /no/such/dir not found"),
        (
            ["deepspeed.config=ds_configs/nope.json"],
            "deepspeed.config: ds_configs/nope.json not found",
        ),
        (
            ["deepspeed.overrides.gradient_clipping=3.0"],
            "gradient_clipping is 3.0 but the run config says 1.0",
        ),
    ],
)
def test_bad_model_or_ds_config(setup, overrides, needle):
    from natscale.config.loader import ConfigError

    _, cfg = setup
    with pytest.raises((PreflightError, ConfigError)) as exc:
        _check(cfg, *overrides)
    assert needle in str(exc.value)


def test_model_dir_without_weights(setup):
    tmp, cfg = setup
    with pytest.raises(
        PreflightError, match=r"has no \*\.safetensors or pytorch_model\*\.bin weights"
    ):
        _check(cfg, f"model.path={tmp / 'model'}", "model.config=null")


def test_wrong_field_dtype(setup):
    import datasets

    tmp, cfg = setup
    ds = datasets.load_from_disk(str(tmp / "data"))
    ds = ds.cast_column("segment_weight", datasets.List(datasets.Value("float64")))
    ds.save_to_disk(str(tmp / "data64"))
    (tmp / "data64" / "stats.json").write_bytes((tmp / "data" / "stats.json").read_bytes())
    with pytest.raises(
        PreflightError, match=r"field 'segment_weight' holds .*expected a list of float32"
    ):
        _check(cfg, f"data.path={tmp / 'data64'}")


def test_token_ids_outside_the_model_vocabulary(setup):
    tmp, cfg = setup
    write_model_config(tmp / "small", vocab=16)
    with pytest.raises(
        PreflightError,
        match=r"row \d+ holds token id \d+, outside the model's vocabulary \[0, 16\)",
    ):
        _check(cfg, f"model.config={tmp / 'small'}")


def test_tokenizer_larger_than_the_model(setup):
    tmp, cfg = setup
    _tokenizer(tmp / "data" / "tokenizer", [f"w{i}" for i in range(VOCAB + 4)])
    with pytest.raises(
        PreflightError, match=f"has {VOCAB + 4} tokens but the model's vocab_size is {VOCAB}"
    ):
        _check(cfg)


def test_data_and_model_tokenizers_differ(setup):
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp, cfg = setup
    _tokenizer(tmp / "data" / "tokenizer", [f"w{i}" for i in range(8)])
    model_dir = tmp / "hfmodel"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp / "model")).save_pretrained(
        model_dir
    )
    _tokenizer(model_dir, [f"x{i}" for i in range(8)])
    with pytest.raises(PreflightError, match="tokenizers differ"):
        _check(cfg, f"model.path={model_dir}", "model.config=null")
    _tokenizer(model_dir, [f"w{i}" for i in range(8)])
    assert (
        _check(cfg, f"model.path={model_dir}", "model.config=null").tokenizer_dir
        == tmp / "data" / "tokenizer"
    )


def test_existing_checkpoints_need_resume(setup):
    tmp, cfg = setup
    (tmp / "out" / "checkpoints" / "global_step3").mkdir(parents=True)
    (tmp / "out" / "checkpoints" / "latest").write_text("global_step3")
    with pytest.raises(PreflightError, match="already holds checkpoints; pass --resume"):
        _check(cfg)
    _check(cfg, resume=True)
