"""Ctrl-C and SIGTERM end a writing command with one line, and leave no partial output."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natscale.atomic import atomic_output_dir
from natscale.cli.interrupt import run_interruptible

REPO = Path(__file__).resolve().parents[1]


def _write(out: Path, stop) -> int:
    with atomic_output_dir(out, kind="prepared", overwrite=True) as tmp:
        (tmp / "half").write_text("x")
        stop()
    return 0


def test_sigterm_and_ctrl_c_remove_the_partial_folder_and_keep_the_old(tmp_path, capsys):
    out = tmp_path / "out"
    _write(out, lambda: None)  # an earlier output
    assert (out / "half").is_file()
    (out / "half").write_text("old")

    def term():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    assert run_interruptible("prepare", lambda: _write(out, term)) == 143
    assert "prepare: stopped by SIGTERM, nothing written" in capsys.readouterr().err

    def ctrl_c():
        raise KeyboardInterrupt

    assert run_interruptible("merge", lambda: _write(out, ctrl_c)) == 130
    assert "merge: interrupted, nothing written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.partial-*
    assert (out / "half").read_text() == "old"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_prepare_stopped_by_sigterm_leaves_nothing(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "natscale.cli", "prepare", "examples/configs/prepare_math.yaml",
           "--out", str(out), "--num-proc", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".data.partial-*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "prepare: stopped by SIGTERM, nothing written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_stop_that_lands_as_the_partial_folder_is_made_removes_it(tmp_path, monkeypatch):
    """SIGTERM's handler raises wherever Python is: also inside ``mkdir``, after the folder was
    made (a busy machine hit this). The partial folder goes all the same."""
    made = Path.mkdir

    def mkdir_then_stop(self, *args, **kwargs):
        made(self, *args, **kwargs)
        if ".partial-" in self.name:
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_stop)
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(tmp_path / "out", kind="prepared"):
        pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
