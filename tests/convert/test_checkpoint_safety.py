"""A real checkpoint with one crafted file: the conversions refuse it (exit 2) and nothing of it runs.

The crafted file is the real file with one more entry whose unpickling would run ``touch MARKER``
(``os.system``), so everything else about the checkpoint is intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from natscale.checkpoint.safety import load_weights_only
from natscale.cli.main import main

pytestmark = pytest.mark.multiproc


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """Add a code-running entry to a real DeepSpeed file (in the optimizer state for optim files)."""
    state = load_weights_only(path, map_location="cpu")
    target = state.get("optimizer_state_dict", state)
    target["natscale_test_payload"] = _SystemCall(marker)
    torch.save(state, path)


def crafted_run(zero_run, variant: str, filename: str, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(zero_run(1, variant), run)
    marker = tmp_path / "marker"
    plant(run / "checkpoints" / "global_step2" / filename, marker)
    return run, marker


@pytest.mark.parametrize(
    "variant,filename",
    [
        ("z3-fp32", "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        ("z3-fp32", "zero_pp_rank_0_mp_rank_00_model_states.pt"),
        ("z2-fp32", "mp_rank_00_model_states.pt"),
    ],
)
def test_zero_to_hf_refuses_a_crafted_file(zero_run, tmp_path, capsys, variant, filename):
    run, marker = crafted_run(zero_run, variant, filename, tmp_path)
    code = main(
        ["convert", "zero-to-hf", str(run / "checkpoints"), str(tmp_path / "hf"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()
    assert f"{filename}: refused to load" in err and "posix.system" in err, err
    assert "only loads checkpoints weights-only" in err


def test_zero_to_universal_refuses_a_crafted_file(zero_run, tmp_path, capsys):
    filename = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    run, marker = crafted_run(zero_run, "z2-fp32", filename, tmp_path)
    ckpt = run / "checkpoints"
    code = main(["convert", "zero-to-universal", str(ckpt), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not marker.exists()
    assert f"{filename}: refused to load" in err and "posix.system" in err, err
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["global_step2"]


def test_legitimate_checkpoint_converts_to_universal_with_workers(zero_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(zero_run(1, "z3-fp32"), run)
    code = main(["convert", "zero-to-universal", str(run / "checkpoints"), "--workers", "2"])
    assert code == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "global_step2_universal" / "zero").is_dir()


def test_zero_to_universal_says_what_is_wrong_with_its_input_as_zero_to_hf_does(
    zero_run, tmp_path, capsys
):
    """A missing folder and a run folder were told to pass --tag; an unknown tag got no list."""
    run = zero_run(1, "z2-fp32")
    for ckpt, said in (
        (tmp_path / "nope", "does not exist"),
        (run, "Point at the folder that engine.save_checkpoint() wrote"),
    ):
        assert main(["convert", "zero-to-universal", str(ckpt)]) == 2
        err = capsys.readouterr().err
        assert said in err and "pass --tag TAG" not in err, err
    assert main(["convert", "zero-to-universal", str(run / "checkpoints"), "--tag", "x"]) == 2
    assert "(tags in " in capsys.readouterr().err
    assert not list((run / "checkpoints").glob("*_universal"))


def test_zero_to_universal_no_progress_shows_no_bar(zero_run, tmp_path, capfd):
    # README: --no-progress turns the bars off; here they are DeepSpeed's (ds_to_universal)
    run = tmp_path / "run"
    shutil.copytree(zero_run(1, "z3-fp32"), run)
    ckpt = str(run / "checkpoints")
    assert main(["convert", "zero-to-universal", ckpt, "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert "zero-to-universal: " in out and "it/s]" not in err and "%|" not in err, err


def test_universal_workers_forked_after_torch_ran_threads_do_not_hang(zero_run, tmp_path):
    """GNU OpenMP is not fork-safe: a worker forked from a process whose thread pool has run
    hung in its first parallel op. Here the parent multiplies matrices first (as a trainer or a
    notebook has), then converts with --workers 2 in a fresh interpreter."""
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(zero_run(1, "z3-fp32"), run)
    code = (
        "import torch; torch.set_num_threads(2); x = torch.randn(1024, 1024); (x @ x).sum()\n"
        "from natscale.cli.main import main\n"
        f"raise SystemExit(main(['convert', 'zero-to-universal', {str(run / 'checkpoints')!r}, "
        "'--workers', '2', '--no-progress']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "checkpoints" / "global_step2_universal" / "zero").is_dir()
