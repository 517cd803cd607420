"""Bad checkpoints give one clear error and leave nothing behind; so does an interrupted run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natscale.checkpoint import safetensors_stream
from natscale.checkpoint.zero_to_hf import convert_zero_to_hf
from natscale.convert.errors import ConvertError

pytestmark = pytest.mark.multiproc
OPTIM = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"


def copy_run(zero_run, world: int, variant: str, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(zero_run(world, variant), dst)
    return dst


def assert_nothing_written(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], list(tmp_path.iterdir())


def convert(run: Path, tmp_path: Path, **kwargs):
    return convert_zero_to_hf(run / "checkpoints", tmp_path / "hf", progress=False, **kwargs)


def test_missing_rank_shard(zero_run, tmp_path):
    run = copy_run(zero_run, 3, "z3-fp32", tmp_path)
    (run / "checkpoints/global_step2" / OPTIM.format(1)).unlink()
    with pytest.raises(
        ConvertError, match=r"missing rank shard.*zero_pp_rank_1_mp_rank_00_optim.*3"
    ):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_stale_shard_from_a_larger_world_is_a_world_size_mismatch(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    tag_dir = run / "checkpoints/global_step2"
    stale = zero_run(3, "z3-fp32") / "checkpoints/global_step2" / OPTIM.format(2)
    shutil.copy(stale, tag_dir / OPTIM.format(2))
    with pytest.raises(ConvertError, match="world-size mismatch"):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_model_file_from_a_run_with_another_world_size(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    name = "zero_pp_rank_0_mp_rank_00_model_states.pt"
    other = zero_run(3, "z3-fp32") / "checkpoints/global_step2" / name
    shutil.copy(other, run / "checkpoints/global_step2" / name)
    with pytest.raises(ConvertError, match=r"world-size mismatch.*world size 3.*by 2 ranks"):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_unknown_tag_lists_the_tags(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    with pytest.raises(ConvertError, match=r"unknown tag 'global_step9'.*global_step2"):
        convert(run, tmp_path, tag="global_step9")
    assert_nothing_written(tmp_path)


def test_a_bad_unrelated_tag_folder_does_not_block_a_good_tag(zero_run, tmp_path):
    """Another tag folder with files of two runs mixed (or tensor-parallel files) is reported
    only when it is the one converted, not when `latest` or --tag names a good one."""
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    bad = run / "checkpoints/global_step1"
    bad.mkdir()
    for name in (
        OPTIM.format(0),
        "bf16_" + OPTIM.format(0),
        "zero_pp_rank_0_mp_rank_01_optim_states.pt",
    ):
        (bad / name).write_bytes(b"")
    assert convert(run, tmp_path).tag == "global_step2"
    assert convert(run, tmp_path, tag="global_step2", overwrite=True).tag == "global_step2"
    with pytest.raises(
        ConvertError, match=r"global_step1/.*mp_rank > 0|world-size mismatch in .*global_step1"
    ):
        convert(run, tmp_path, tag="global_step1", overwrite=True)
    with pytest.raises(
        ConvertError, match=r"unknown tag 'global_step9'.*global_step1, global_step2"
    ):
        convert(run, tmp_path, tag="global_step9", overwrite=True)


def test_truncated_file(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    path = run / "checkpoints/global_step2" / OPTIM.format(0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=rf"cannot read .*{OPTIM.format(0)}.*truncated"):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_directory_that_is_not_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/notes.txt").write_text("hello")
    with pytest.raises(ConvertError, match="is not a DeepSpeed checkpoint directory"):
        convert(run, tmp_path)
    (run / "checkpoints/latest").write_text("step1")
    (run / "checkpoints/step1").mkdir()
    (run / "checkpoints/step1/model.bin").write_text("x")
    with pytest.raises(ConvertError, match="is not a DeepSpeed ZeRO checkpoint"):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_a_latest_file_that_is_not_text_is_an_unknown_tag(tmp_path, capsys):
    """A damaged `latest` (bytes that are not UTF-8) is a named error for both conversions, not
    a UnicodeDecodeError traceback."""
    from natscale.cli.main import main

    run = tmp_path / "run"
    (run / "checkpoints/global_step2").mkdir(parents=True)
    (run / "checkpoints/latest").write_bytes(b"\xff\xfeglobal_step2\n")
    with pytest.raises(ConvertError, match=r"unknown tag .*tags in"):
        convert(run, tmp_path)
    assert main(["convert", "zero-to-universal", str(run / "checkpoints")]) == 2
    assert "unknown tag" in capsys.readouterr().err  # as zero-to-hf reads it
    assert_nothing_written(tmp_path)


def test_missing_config_names_the_places_searched(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    shutil.rmtree(run / "hf_config")
    with pytest.raises(ConvertError, match=r"no config.json(.|\n)*run/hf_config/config.json"):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_config_of_another_model_is_refused(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    cfg = (
        (run / "hf_config/config.json")
        .read_text()
        .replace('"hidden_size": 64', '"hidden_size": 32')
    )
    (run / "hf_config/config.json").write_text(cfg)
    with pytest.raises(ConvertError, match="shape mismatch"):
        convert(run, tmp_path)
    assert_nothing_written(tmp_path)


def test_existing_output_needs_overwrite(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf/keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match="already exists"):
        convert(run, tmp_path)
    assert (tmp_path / "hf/keep.txt").read_text() == "mine"
    with pytest.raises(ConvertError, match="not a Hugging Face export made by natscale"):
        convert(run, tmp_path, overwrite=True)  # a folder natscale did not make is never replaced
    assert (tmp_path / "hf/keep.txt").read_text() == "mine"
    (tmp_path / "hf/keep.txt").unlink()
    convert(run, tmp_path)  # an empty folder is filled; the export gets our marker
    (tmp_path / "hf/notes.txt").write_text("mine")  # ... but what a user adds there is kept
    with pytest.raises(ConvertError, match=r"did not write there \(notes\.txt\)"):
        convert(run, tmp_path, overwrite=True)
    (tmp_path / "hf/notes.txt").unlink()
    (tmp_path / "hf/config.json").write_text("{}")
    convert(run, tmp_path, overwrite=True)  # ... so a later --overwrite replaces it
    assert json.loads((tmp_path / "hf/config.json").read_text())  # the export's own again
    # the run folder itself (it holds the checkpoint) is never replaced
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(ConvertError, match="holds an input of this command"):
        convert_zero_to_hf(run / "checkpoints", run, progress=False, overwrite=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_cli_error_exit_code_and_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "natscale.cli", "convert", "zero-to-hf", str(tmp_path / "nope"),
         str(tmp_path / "hf")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "nothing written" in proc.stderr
    assert not (tmp_path / "hf").exists()


def test_exception_mid_write_removes_partial_output(zero_run, tmp_path, monkeypatch):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    original, calls = safetensors_stream.ShardWriter.write, []

    def write_then_interrupt(self, name, tensor):
        calls.append(name)
        if len(calls) == 5:  # the third shard is being written
            raise KeyboardInterrupt
        original(self, name, tensor)

    monkeypatch.setattr(safetensors_stream.ShardWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(run, tmp_path, max_shard_size="100KB")
    assert_nothing_written(tmp_path)


def test_sigterm_mid_conversion_leaves_no_output(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    # the real CLI, slowed down per tensor so the signal lands while shards are being written
    script = (
        "import sys, time\n"
        "from natscale.checkpoint import safetensors_stream as s\n"
        "w = s.ShardWriter.write\n"
        "s.ShardWriter.write = lambda self, n, t: (time.sleep(0.5), w(self, n, t))\n"
        "from natscale.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-c", script, "convert", "zero-to-hf", str(run / "checkpoints"),
           str(tmp_path / "hf"), "--max-shard-size", "100KB", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".hf.partial-*/model-00002-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert_nothing_written(tmp_path)


def test_partial_output_of_a_killed_run_is_cleaned_up(zero_run, tmp_path):
    run = copy_run(zero_run, 2, "z3-fp32", tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".hf.partial-{dead.pid}"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    convert(run, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]


def test_a_shard_that_disappears_while_read_is_named_as_pruned(tmp_path):
    """A running job pruned the tag after `latest` was read: not "truncated or corrupt"."""
    from natscale.checkpoint.zero_files import load_metadata_file

    tag = tmp_path / "global_step3"
    with pytest.raises(ConvertError) as info:
        load_metadata_file(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    message = str(info.value)
    assert "its tag folder disappeared while it was read" in message and "--tag" in message
    assert "truncated" not in message
