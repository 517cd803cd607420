"""Bad option values are usage errors: exit 2 with argparse's message, no traceback, no work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from natscale.cli.argtypes import float_in, port, positive_float, positive_int, size_bytes
from natscale.cli.main import main


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5XB", "unknown unit 'XB'"),
        ("100", "the unit is required"),
        ("GB", "is not a size"),
        ("0MB", "at least 1 byte"),
        ("5.5.5GB", "is not a size"),
    ],
)
def test_convert_max_shard_size_is_a_usage_error(capsys, tmp_path, value, expected):
    out = tmp_path / "hf"
    err = _usage_error(
        capsys, ["convert", "zero-to-hf", str(tmp_path), str(out), "--max-shard-size", value]
    )
    assert "argument --max-shard-size" in err and expected in err
    assert "5GB, 500MB or 2GiB" in err or "e.g. 5GB" in err  # what is accepted
    assert not out.exists()


def test_size_units():
    assert size_bytes("5GB") == 5 * 10**9
    assert size_bytes("500MB") == 500 * 10**6
    assert size_bytes("2GiB") == 2 * 2**30
    assert size_bytes(" 1.5 kib ") == 1536
    with pytest.raises(argparse.ArgumentTypeError):
        size_bytes("100")


def test_numeric_types_at_their_bounds():
    assert positive_float("1e-9") == 1e-9 and positive_int("1") == 1 and port("65535") == 65535
    assert float_in(0.0, 1.0, low_open=False)("0") == 0.0  # a closed end takes its bound
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number in \(0, inf\)"):
        positive_float("0")  # an open end does not
    with pytest.raises(argparse.ArgumentTypeError, match="the minimum is 1"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match="not a TCP port"):
        port("65536")


def test_selftest_steps_minimum_is_named(capsys):
    err = _usage_error(capsys, ["selftest", "--steps", "1"])
    assert "argument --steps: 1 is too small; the minimum is 2" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["selftest", "--seq-len", "1"],
        ["selftest", "--micro-batch", "0"],
        ["selftest", "--lr", "nan"],
        ["convert", "zero-to-universal", "ckpt", "--workers", "0"],
        ["prepare", "cfg.yaml", "--num-proc", "0"],
        ["bench", "throughput", "--warmup", "0"],
        ["bench", "throughput", "--steps", "two"],
        ["bench", "throughput", "--repeats", "0"],
        ["bench", "project", "--overlap", "1"],
        ["bench", "project", "--assumed-mfu", "1.5"],
        ["launch", "--master-port", "70000", "--", "run.yaml"],
        ["launch", "--nodes", "0", "--", "run.yaml"],
    ],
)
def test_numeric_options_are_usage_errors(capsys, argv):
    err = _usage_error(capsys, argv)
    assert "error: argument --" in err


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_bench_device_cuda_without_cuda_refuses(capsys, tmp_path):
    work = tmp_path / "work"
    code = main(
        ["bench", "throughput", "--device", "cuda", "--work-dir", str(work), "--results", str(work)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "sees no CUDA device" in err and "--device cpu" in err
    assert not work.exists()  # refused before anything ran


def test_bench_sweep_unknown_field_is_bad_input(capsys, tmp_path):
    work = tmp_path / "work"
    argv = ["bench", "sweep", "--param", "no_such=1,2", "--device", "cpu"]
    assert main([*argv, "--work-dir", str(work)]) == 2
    assert "unknown field 'no_such'" in capsys.readouterr().err
    assert not Path(work).exists()


@pytest.mark.parametrize("command", ["throughput", "sweep"])
def test_bench_a_bad_set_is_refused_before_any_work(capsys, tmp_path, command):
    """It was found by the first training run, after the data was built (about a minute)."""
    work = tmp_path / "work"
    argv = ["bench", command, "--device", "cpu", "--work-dir", str(work)]
    if command == "sweep":
        argv += ["--param", "seq_len=64,128"]
    assert main([*argv, "--set", "train.bogus=1", "--set", "train.lr=x"]) == 2
    err = capsys.readouterr().err
    assert "train.bogus: unknown key" in err and "train.lr: Input should be a valid number" in err
    assert not work.exists()


def test_bench_project_unreadable_calibration_is_bad_input(capsys, tmp_path):
    missing = tmp_path / "no_sweep.json"
    code = main(["bench", "project", "--calibrate", str(missing), "--results", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--calibrate {missing}: cannot read a sweep JSON" in err and "Traceback" not in err


@pytest.mark.parametrize("blank", ["", " "])
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["plot", "RUN", "--out", "{}"], "--out"),
        (["eval", "cfg.yaml", "--out", "{}"], "--out"),
        (["prepare", "cfg.yaml", "--out", "{}"], "--out"),
        (["inspect", "{}"], "data"),
        (["merge", "{}", "part"], "out"),
        (["convert", "zero-to-hf", "ckpt", "{}"], "out_dir"),
        (["convert", "data", "--from", "nat", "--to", "openai", "in.jsonl", "{}"], "output"),
        (["bench", "nat", "--quick", "--work-dir", "{}"], "--work-dir"),
        (["launch", "--rank-logs", "{}", "--", "cfg.yaml"], "--rank-logs"),
    ],
)
def test_an_empty_or_blank_path_is_a_usage_error(
    capsys, tmp_path, monkeypatch, argv, option, blank
):
    """Not the current directory (``plot --out ""`` wrote there), not the config's default
    (``eval --out ""``), not a folder named by a space (``eval --out " "``)."""
    monkeypatch.chdir(tmp_path)
    err = _usage_error(capsys, [blank if a == "{}" else a for a in argv])
    assert f"argument {option}" in err and "is empty; give a path" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("natscale.config.prepare.PrepareConfig", "output"),
        ("natscale.config.run.RunConfig", "output_dir"),
    ],
)
def test_a_blank_output_in_a_config_is_refused(model, field):
    import importlib

    from pydantic import ValidationError

    module, name = model.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ValidationError, match="is empty; give a path") as info:
        cls.model_validate({field: " "})
    assert any(err["loc"] == (field,) for err in info.value.errors())
