"""`logging.progress_bar: false` means no bar at all (the libraries' too), and DeepSpeed's
"Setting accelerator to CPU" warning and op "built successfully" line are not printed."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from natscale.cli.main import quiet_deepspeed_accelerator_notice
from tests.train.train_fixtures import (
    REPO,
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)

BAR = re.compile(r"\d+%\||it/s\]|s/it\]|step/s\]|s/step\]")


def test_train_without_progress_bars_prints_none(tmp_path: Path):
    save_rows(pack_greedy(make_segments(12, seed=0), 64), tmp_path / "data")
    cfg = write_run_config(
        tmp_path / "run.yaml",
        data_dir=tmp_path / "data",
        model_config=write_model_config(tmp_path / "model"),
        out=tmp_path / "out",
        train={"steps": 2, "warmup_steps": 1},
        checkpoint={"export_hf": True},  # the HF export's "Writing model shards" bar
        logging={"progress_bar": False},
    )
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}  # auto-detect: CPU
    env.update(GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "train", str(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "out" / "hf" / "config.json").is_file()
    assert not BAR.search(out), out[-3000:]
    assert "Writing model shards" not in out
    assert "Setting accelerator to CPU" not in out
    assert "built successfully" not in out
    assert "train: finished at step 2/2" in proc.stdout


def test_accelerator_notice_filter_keeps_other_warnings(capfd):
    if not quiet_deepspeed_accelerator_notice():
        return  # an NVIDIA device is visible: the warning is kept there on purpose
    logger = logging.getLogger("DeepSpeed")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        logger.warning("Setting accelerator to CPU. If you have GPU ..., unable to detect it.")
        logger.warning("a real DeepSpeed warning")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "Setting accelerator" not in err and "a real DeepSpeed warning" in err


def test_no_progress_flag_is_logging_progress_bar_false():
    # the README's "--no-progress turns it off" holds for train (and convert zero-to-hf) too
    import argparse

    from natscale.cli import convert as convert_cli
    from natscale.cli import train as train_cli
    from natscale.config.loader import load_config
    from natscale.config.run import RunConfig

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    config = str(REPO / "examples" / "configs" / "train_tiny.yaml")
    for argv, expected in (([config], True), ([config, "--no-progress"], False)):
        targs = train_cli.train_args(parser.parse_args(argv))
        cfg = load_config(targs.config, RunConfig, targs.overrides)
        assert cfg.logging.progress_bar is expected, argv

    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    assert parser.parse_args(["zero-to-hf", "ckpt", "out", "--no-progress"]).quiet
    assert not parser.parse_args(["zero-to-hf", "ckpt", "out"]).quiet
